"""PostgreSQL only: the REST API while the database server cannot be reached.

A database that is down (restarting, or the network to it cut) is a temporary
condition the client can wait out: the API answers 503 with the reason, as for a
busy store, never 500.
"""

from __future__ import annotations

import pytest  # noqa: E402
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)
from traitlets.config import Config

from .. import test_server_api as server_api
from ..test_server_api import Api

api = server_api.api
DOWN = "postgresql://nobody@127.0.0.1:1/team"  # nothing listens on port 1


@pytest.fixture
def jp_server_config() -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_agent": True}},
            "AgentServer": {"store_path": DOWN, "busy_timeout": 1.0},
        }
    )


def test_a_database_that_is_down_is_503_with_the_reason(api: Api) -> None:
    for path, query in ((("status",), {}), (("agents",), {"notebook": "nb.ipynb"})):
        code, body = api.get(*path, **query)
        assert code == 503, (path, code, body)
        assert "could not be reached" in str(body), body
