"""The durable agent loop, and the concurrency rules of the whole package.

The loop: :mod:`.execution` drives one execution of a run, :mod:`.checkpoints`
is the single place its state changes, :mod:`.steps`, :mod:`.compaction` and
:mod:`.control` are its steps, :mod:`.runs` reads and makes runs.

Concurrency
===========

One kernel may execute several agents at once (a cell, background jobs, a
timeline's actions), several kernels may share one store, and the Jupyter
server reads it meanwhile. These are all the threads, locks and rules; each
lock's own docstring or comment points here.

Threads
-------
1. **The kernel's main thread** runs cells: a ``%%agent`` cell executes its
   agent here, children of ``delegate`` calls included. Ctrl-C arrives here
   only, and is held back while a checkpoint is written
   (:func:`.checkpoints.shield_from_interrupt`). Widget messages from the
   browser (clicks) are handled on this thread too, between cells.
2. **Background jobs** (:meth:`jupyter_agent.kernel.runtime.AgentRuntime.start_job`,
   ``jupyter-agent <agent>``): one per agent, executing it (and its children)
   like a cell would; its last act is to give its claim back.
3. **The value-saving thread** (:class:`jupyter_agent.namespace.tracking.Saving`,
   ``jupyter-agent-save``): serializes a step's large changed values while the
   model is asked for the next step; the execution joins it before its next
   checkpoint (:meth:`.checkpoints.Recorder.write_saved`). The file-hashing
   thread (:class:`jupyter_agent.namespace.files.Hashing`, ``jupyter-agent-files``)
   does the same for the files a call wrote, touching no namespace value.
4. **MCP servers** (:class:`jupyter_agent.tools.mcp.Server`): each session lives
   on a thread of its own with its own event loop (an anyio portal); the
   agent's thread waits on each call.
5. **Async user tools** (``jupyter-agent async tool``): a coroutine tool runs to
   completion on a thread of its own; the agent's thread waits for it.
6. **Stale re-reads** (:mod:`jupyter_agent.store.duckdb.stale`,
   ``jupyter-agent-refresh``): a polling reader reads the store again in the
   background while it answers from journals.
7. **Journal folding** is no thread of its own: a writer folds its journal into
   DuckDB as it closes (in the execution's thread), and any reader that opens
   DuckDB folds what finished (the server's store thread, a re-read, a cell).
8. **The server's store thread** (``jupyter_agent.server``, one worker): every
   store read of the REST API, so the server's event loop never waits.
9. **Warm-up** (:func:`jupyter_agent.model.http.warm_up`): the model client's
   imports and the SSL context, once per kernel, touching no shared state but
   module imports.
10. **A cell output's update timer** (``jupyter-agent-cell``, one per cell output while
    its run lasts, :class:`jupyter_agent.kernel.cell_output.LiveCell`): shows what a
    throttled write or checkpoint left unshown, under that output's lock only.
11. **A timeline's flusher** (``timeline-flusher``, one per widget followed live,
    :meth:`jupyter_agent.kernel.widget.TimelineWidget.flush`): sends the checkpoints
    that reporting threads queued, under the widget's lock (5); a step only queues.
12. **Webhook deliveries** (:class:`jupyter_agent.loop.notify.Notifier`,
    ``jupyter-agent-notify``): one per URL of an execution that stopped, posting
    its event and retrying; they touch only a marker file, and on giving up say
    so in the run's output and its open timelines (:meth:`AgentRuntime.warn`).

Widgets' traits are set from whichever thread reports progress (2 or 1), by
their flusher (11), or by a delivery giving up (12, a notice); the kernel sends
them to the browser from there.

Locks
-----
Three are never waited for: taking one that is held raises
:class:`~jupyter_agent.errors.AgentBusy` (naming the holder), or a reader
probes it and goes on. An execution takes them in this order, before its
first checkpoint, and holds them until it ends:

1. **The agent's claim in the kernel** (:meth:`AgentRuntime.claim`): one
   execution per agent per kernel.
2. **The agent's store lock** (:meth:`Store.agent_lock`): one writer per agent
   across processes and hosts, taken before its latest run is read: a
   ``flock`` on a per-agent file
   (:func:`jupyter_agent.store.duckdb.locks.owner_lock`, re-entrant per thread
   through ``_holds_lock``) or a PostgreSQL session advisory lock at a key kept
   in the owner's row (``postgres.locks.Locks`` and its ``mutex``, held for the
   few statements that rotate the key; the registry behind ``_lock_sessions_lock``).
3. **The run's journal** (:class:`~jupyter_agent.store.duckdb.journal.JournalWriter`):
   an exclusive ``flock``; readers probe it with a shared, non-blocking one (a
   journal nobody locks belongs to a dead process, and is folded).

A child of a ``delegate`` call runs in its parent's thread and takes 1 to 3
for itself while its parent holds its own.

The others are waited for. A thread holding one waits only for those after
it in this list, so no two threads ever wait for each other:

4. **The namespace lock** (:class:`~jupyter_agent.namespace.lock.NamespaceLock`,
   one per kernel, held by the runtime): one agent's code at a time in the
   namespace, re-entrant for its thread; a waiting agent says whom it waits
   for, and its cancel event ends the wait. Held only around a tool call that
   runs code in the kernel (``python``, in-kernel user tools): the call's
   start checkpoint, the code, and its result's snapshot and checkpoint. While
   it is held, other agents go on asking the model, compacting, calling MCP
   tools, delegating and writing their checkpoints; only their code waits.
   Code also waits while an agent's large values are being saved
   (:meth:`NamespaceLock.saving`, until the saving thread ends), since that
   thread reads the values as the step left them. Restoring a run's variables
   (a resume, a restore, a fork or a rewind) writes the namespace without it,
   as a cell the user runs meanwhile does.
5. **A timeline widget's** ``_lock``: its timeline and traits, taken by its
   flusher (11) sending the checkpoints that :class:`.checkpoints.Events` queued,
   by a refresh, and by the browser's requests; it may read the store (6). The
   thread reporting a checkpoint (with 4 possibly held) takes it only to start
   the flusher, or to send inline where ``FLUSH_EVERY`` is 0.
   A cell reads its widget's timeline inside its reads' session (6) and builds
   the widget on it in the execution's thread once the first model request is
   out (no lock of ours held there but 1-3), or when the execution ends; nobody
   else can hold that widget's lock then, as the cell has claimed the agent.
6. **The store file**: DuckDB lets one process at a time open it, so a
   connection waits (up to ``busy_timeout``) while another process holds it.
   A store session (:meth:`Store.session`) holds one connection: the reads of a
   cell before its first model request share one, closed before the execution
   starts, so no model call or user wait happens inside it. On DuckDB it is opened
   by the first read that needs it: while the files beside the store are current
   (:mod:`jupyter_agent.store.duckdb.known`), a cell's reads need none. Folding a journal
   (a writer's close, after 4 is released; any reader's open) holds it too,
   with ``_merge_locks[path]`` (folding within the process), ``_migrate_lock``
   (schema changes) and ``_umask_lock`` (new files).
7. **Leaf locks**, held for a few statements, waiting for nothing of ours:
   :attr:`AgentRuntime._lock` (claims, views, store handles; views are called
   after it is released), the runtime singleton's ``_current_lock``, the
   widgets' ``_cell_lock`` (each cell's widget), the runtime's notifier's ``_lock``
   (the events on their way), a cell output's ``_lock``
   (:class:`~jupyter_agent.kernel.cell_output.LiveCell`), the stale reader's ``_lock``
   (never held during a read), the model client's ``_quirks_lock`` and
   ``_http_lock``, a connection pool's ``_lock``
   (:class:`~jupyter_agent.model.transport.Pool`), the PostgreSQL ``_ready_lock`` (and ``pg_advisory_xact_lock``
   around DDL across processes).

Thread-local, so never shared: a store's session connection and wait
(``DuckDBStore._local``, ``PostgresStore._local``, and the PostgreSQL readers
kept per thread, ``postgres.store._local``), the captured output of a
tool and the redaction of what an executing agent prints (``tools.python._local``:
only while an agent executes on that thread), the ``on_sent`` hook of the request being sent
(``model.http._sending``).

What a reader may assume about a writer
---------------------------------------
* A checkpoint is written (journal append, synced unless the next one follows
  at once) before it is applied to the :class:`~jupyter_agent.core.state.RunState`
  and before anything acts on it; so what any reader sees is a prefix of the
  run's steps, never a step that did not happen. The one exception, a
  ``tool_result`` whose large values are still being saved, is written before
  any later checkpoint and before code runs again.
* A journal frame is whole or dropped (length and CRC); a blob is journaled
  (a large one's file written and synced first) before the checkpoint that
  refers to it.
* The :class:`RunState` of an execution is changed only by its own thread; the
  :class:`.checkpoints.Events` (text, timelines) get each row and delta after
  it was written, and must not read the state from another thread.
* The saving thread reads only the values the step left bound; nothing runs
  code in the namespace until the execution took its result.
* A run is live while its writer holds its journal (or its advisory lock): a
  reader shows a live run's journaled checkpoints without storing them, and a
  run whose writer died as interrupted, resumable by anyone.
"""
