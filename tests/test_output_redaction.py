"""Secrets never reach a cell's output: what the kernel streams and what a notebook saves."""

from __future__ import annotations

import textwrap

from jupyter_agent.testing import ScriptedServer

from .conftest import API_KEY
from .test_cli import SETUP, cli, notebook
from .test_durable_kernel import tool

DEFINE = textwrap.dedent(
    '''
    import os
    from jupyter_agent import tool

    @tool
    def fetch_key() -> str:
        """The service's key, as a careless tool would give it."""
        print("fetching", os.environ["OPENAI_API_KEY"])
        return "key: " + os.environ["OPENAI_API_KEY"]
    '''
)
AGENT = "%%agent --model scripted --tools fetch_key\nShow me the key."


def leaky_script() -> list[dict]:
    return [
        tool("import os\nprint('python sees', os.environ['OPENAI_API_KEY'])"),
        {"tool_calls": [{"name": "fetch_key", "arguments": {}}]},
        {"content": f"The key is {API_KEY}, and again: {API_KEY}."},
    ]


def test_the_kernel_streams_no_secret(kernel_factory, scripted: ScriptedServer):
    scripted.set_script(leaky_script())
    k = kernel_factory()
    assert k.run(DEFINE).status == "ok"
    result = k.run(AGENT, cell_id="leaky")
    assert result.status == "ok", result.text
    assert API_KEY not in result.text, result.text
    assert "python sees [REDACTED]" in result.text
    assert "fetching [REDACTED]" in result.text
    assert "The key is [REDACTED], and again: [REDACTED]." in result.text
    # The user's own cells are theirs: only the agent's output is redacted.
    own = k.run("import os; print(os.environ['OPENAI_API_KEY'])")
    assert API_KEY in own.stdout


def test_a_resumed_notebook_saves_no_secret(scripted: ScriptedServer, agent_env, tmp_path):
    scripted.set_script(leaky_script())
    nb_path = notebook(tmp_path / "nb.ipynb", [SETUP, DEFINE, AGENT])
    done = cli("resume", str(nb_path), env=agent_env)
    assert done.returncode == 0, done.stderr
    saved = nb_path.read_text()
    assert API_KEY not in saved
    assert "The key is [REDACTED]" in saved and "python sees [REDACTED]" in saved


def test_a_secret_split_between_chunks_is_still_redacted():
    from jupyter_agent.core.redaction import StreamRedactor

    stream = StreamRedactor([API_KEY])
    half = len(API_KEY) // 2
    shown = [stream.feed(c) for c in ("The key is ", API_KEY[:half], API_KEY[half:], ".\nNext")]
    shown.append(stream.drain())
    assert "".join(shown) == "The key is [REDACTED].\nNext"
    assert API_KEY[:half] not in "".join(shown[:3])  # nothing of it before the line is whole
    # A line without breaks is still shown as it grows, but for its tail.
    long = stream.feed("x" * (StreamRedactor.LONG_LINE + 10))
    assert long == "x" * (StreamRedactor.LONG_LINE + 10 - StreamRedactor.KEEP)
