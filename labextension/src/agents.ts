/**
 * The agents of one open notebook: fetched from the server, drawn as badges.
 *
 * Everything here comes from the server extension, so badges appear as soon
 * as the notebook opens, whether or not a kernel is running.
 */
import { Notebook, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { APIError, IAgentSummary, IJob, listAgents, listJobs } from './api';
import { parseAgentName } from './cells';

export type CellWidget = Notebook['widgets'][number];

/** Poll interval while an agent runs or an agent cell executes. */
const FAST_MS = 3000;
/** Poll interval otherwise (agents may run in another kernel or notebook view). */
const IDLE_MS = 20000;

/** An agent together with the cell it belongs to, if that cell is in the notebook. */
export interface IAgentEntry {
  agent: IAgentSummary;
  cell: CellWidget | null;
  index: number;
}

/** An agent entry and the agents it delegated to, drawn nested under it. */
export interface IAgentNode {
  entry: IAgentEntry;
  children: IAgentNode[];
}

/**
 * The entries as a tree: each delegated agent under its parent, in the order
 * they started; agents whose parent is not in the list stay at the top.
 */
export function agentTree(entries: IAgentEntry[]): IAgentNode[] {
  const nodes = new Map(
    entries.map(entry => [entry.agent.name, { entry, children: [] as IAgentNode[] }])
  );
  // A parent chain that loops back (never written so, but the store is data) stays flat.
  const nests = (name: string): boolean => {
    const seen = new Set([name]);
    for (let up = nodes.get(name)?.entry.agent.parent_agent; up && nodes.has(up);) {
      if (seen.has(up)) {
        return false;
      }
      seen.add(up);
      up = nodes.get(up)!.entry.agent.parent_agent;
    }
    return true;
  };
  const roots: IAgentNode[] = [];
  for (const entry of entries) {
    const node = nodes.get(entry.agent.name)!;
    const parent = entry.agent.parent_agent ? nodes.get(entry.agent.parent_agent) : undefined;
    if (parent && parent !== node && nests(entry.agent.name)) {
      parent.children.push(node);
    } else {
      roots.push(node);
    }
  }
  for (const node of nodes.values()) {
    node.children.sort((a, b) => a.entry.agent.started_at - b.entry.agent.started_at);
  }
  return roots;
}

export class NotebookAgents implements IDisposable {
  constructor(readonly panel: NotebookPanel) {
    NotebookActions.executionScheduled.connect(this._onScheduled, this);
    NotebookActions.executed.connect(this._onExecuted, this);
    panel.context.pathChanged.connect(this._onPathChanged, this);
    panel.content.modelContentChanged.connect(this._onContentChanged, this);
    panel.disposed.connect(() => this.dispose());
    void panel.context.ready.then(() => this.refresh());
  }

  /** Emitted after every refresh and re-render. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The last error talking to the server, if the last refresh failed. */
  get error(): string | null {
    return this._error;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** The worker pool's queued, running and failed jobs of this notebook. */
  get jobs(): IJob[] {
    return this._jobs;
  }

  /** Whether the agents have been fetched at least once. */
  get loaded(): boolean {
    return this._loaded;
  }

  /** The notebook's agents, in the order of their cells (agents without a cell last). */
  entries(): IAgentEntry[] {
    const byAgent = new Map<IAgentSummary, { cell: CellWidget; index: number }>();
    this.panel.content.widgets.forEach((cell, index) => {
      const agent = this.agentFor(cell);
      if (agent && !byAgent.has(agent)) {
        byAgent.set(agent, { cell, index });
      }
    });
    const entries = [...this._agents.values()].map(agent => {
      const found = byAgent.get(agent);
      return { agent, cell: found?.cell ?? null, index: found?.index ?? -1 };
    });
    const position = (e: IAgentEntry) => (e.index < 0 ? Number.MAX_SAFE_INTEGER : e.index);
    return entries.sort((a, b) => position(a) - position(b));
  }

  /** Whether a cell is an `%%agent` cell. */
  isAgentCell(cell: CellWidget): boolean {
    return this._nameOf(cell) !== undefined;
  }

  /**
   * The agent of a cell, if the store knows it: by the `--name` on its `%%agent`
   * line, else the unnamed agent the server lists with the cell's id.
   */
  agentFor(cell: CellWidget): IAgentSummary | undefined {
    const name = this._nameOf(cell);
    if (name === undefined) {
      return undefined;
    }
    return name === null ? this._byCell.get(cell.model.id) : this._agents.get(name);
  }

  /** A cell's `--name`: `null` for an unnamed agent cell, `undefined` for other cells. */
  private _nameOf(cell: CellWidget): string | null | undefined {
    if (cell.model.type !== 'code') {
      return undefined;
    }
    return parseAgentName(cell.model.sharedModel.getSource());
  }

  /** Fetch the agents now (a refresh already under way is reused). */
  refresh(): Promise<void> {
    if (!this._pending) {
      this._pending = this._fetch().finally(() => {
        this._pending = null;
      });
    }
    return this._pending;
  }

  /** Draw or update a status badge on every agent cell. */
  render(): void {
    for (const cell of this.panel.content.widgets) {
      this._renderBadge(cell);
    }
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    window.clearTimeout(this._timer);
    window.clearTimeout(this._renderTimer);
    Signal.clearData(this);
    for (const badge of this._badges.values()) {
      badge.dispose();
    }
    this._badges.clear();
  }

  private async _fetch(): Promise<void> {
    if (this._disposed) {
      return;
    }
    window.clearTimeout(this._timer);
    const path = this.panel.context.localPath;
    try {
      const list = await listAgents(path);
      if (this._disposed) {
        return;
      }
      if (path !== this.panel.context.localPath) {
        // Renamed while asking: ask again under the new path.
        window.setTimeout(() => void this.refresh(), 0);
        return;
      }
      this._agents = new Map(list.agents.map(agent => [agent.name, agent]));
      this._byCell = new Map(
        list.agents
          .filter(agent => !agent.named && agent.cell_id)
          .map(agent => [agent.cell_id!, agent])
      );
      this._running = list.running;
      // Jobs are extra: a server without the worker pool answers none, or an error, ignored.
      this._jobs = await listJobs(path).then(
        reply => reply.jobs,
        () => []
      );
      this._error = null;
      this._loaded = true;
    } catch (error) {
      this._error =
        error instanceof APIError && error.status === 404
          ? 'The jupyter-agent server extension is not enabled on this server.'
          : error instanceof Error
            ? error.message
            : String(error);
    }
    if (this._disposed) {
      return;
    }
    this.render();
    this._changed.emit();
    this._schedule();
  }

  private _schedule(): void {
    window.clearTimeout(this._timer);
    const fast = this._running || this._executing.size > 0;
    this._timer = window.setTimeout(
      // A hidden browser tab skips a turn instead of polling.
      () => (document.hidden ? this._schedule() : void this.refresh()),
      fast ? FAST_MS : IDLE_MS
    );
  }

  private _renderBadge(cell: CellWidget): void {
    const agent = this.agentFor(cell);
    const host = cell.inputArea?.node;
    let badge = this._badges.get(cell.model.id);
    if (badge && (!agent || !host || badge.host !== host)) {
      badge.dispose();
      this._badges.delete(cell.model.id);
      badge = undefined;
    }
    cell.toggleClass('jp-AgentCell', !!agent);
    if (!agent || !host) {
      return;
    }
    if (!badge) {
      badge = new Badge(host);
      this._badges.set(cell.model.id, badge);
    }
    badge.show(agent);
  }

  private _isOurs(notebook: Notebook): boolean {
    return notebook === this.panel.content;
  }

  private _onScheduled(_: unknown, args: { notebook: Notebook; cell: CellWidget }): void {
    if (!this._isOurs(args.notebook) || !this.isAgentCell(args.cell)) {
      return;
    }
    this._executing.add(args.cell.model.id);
    // Soon enough to show the run starting; the fast poll takes over from there.
    window.clearTimeout(this._timer);
    this._timer = window.setTimeout(() => void this.refresh(), 1000);
  }

  private _onExecuted(_: unknown, args: { notebook: Notebook; cell: CellWidget }): void {
    if (!this._isOurs(args.notebook)) {
      return;
    }
    const wasAgent = this._executing.delete(args.cell.model.id);
    if (wasAgent || this.isAgentCell(args.cell)) {
      void this.refresh();
    }
  }

  private _onPathChanged(): void {
    void this.refresh();
  }

  private _onContentChanged(): void {
    // Sources changed (a --name edited, cells added): re-map without refetching.
    window.clearTimeout(this._renderTimer);
    this._renderTimer = window.setTimeout(() => {
      if (!this._disposed) {
        this.render();
        this._changed.emit();
      }
    }, 300);
  }

  private _agents = new Map<string, IAgentSummary>();
  /** Unnamed agents by the id of their cell, as the server lists them. */
  private _byCell = new Map<string, IAgentSummary>();
  private _badges = new Map<string, Badge>();
  private _changed = new Signal<this, void>(this);
  private _disposed = false;
  private _error: string | null = null;
  private _executing = new Set<string>();
  private _loaded = false;
  private _pending: Promise<void> | null = null;
  private _renderTimer = 0;
  private _running = false;
  private _jobs: IJob[] = [];
  private _timer = 0;
}

/**
 * The status badge of one agent cell, at the right of the editor's first line.
 *
 * The active cell's toolbar is drawn in the same corner, so the badge moves
 * left of it whenever the toolbar comes or goes.
 */
class Badge {
  constructor(readonly host: HTMLElement) {
    this.node = document.createElement('div');
    host.appendChild(this.node);
    this._children = new MutationObserver(() => this._watchToolbar());
    this._children.observe(host, { childList: true });
    this._resize = new ResizeObserver(() => this._place());
    this._watchToolbar();
  }

  readonly node: HTMLElement;

  show(agent: IAgentSummary): void {
    this.node.className = `jp-AgentBadge jp-AgentBadge-${agent.status}`;
    this.node.dataset.agentName = agent.name;
    this.node.dataset.agentStatus = agent.status;
    this.node.textContent = agent.plan ? `${agent.label} · plan ${agent.plan.text}` : agent.label;
    this.node.title = describe(agent);
    this._place();
  }

  dispose(): void {
    this._children.disconnect();
    this._resize.disconnect();
    this.node.remove();
  }

  private _watchToolbar(): void {
    const toolbar = this.host.querySelector<HTMLElement>(':scope > .jp-cell-toolbar');
    if (toolbar !== this._toolbar) {
      this._resize.disconnect();
      this._toolbar = toolbar;
      if (toolbar) {
        this._resize.observe(toolbar);
      }
    }
    this._place();
  }

  private _place(): void {
    const width = this._toolbar?.isConnected ? this._toolbar.offsetWidth : 0;
    const right = width ? `${width + 12}px` : '';
    if (this.node.style.right !== right) {
      this.node.style.right = right;
    }
  }

  private _children: MutationObserver;
  private _resize: ResizeObserver;
  private _toolbar: HTMLElement | null = null;
}

/** A count as every view writes it (the Python side's vocab.tokens): "1,658". */
export function count(n: number): string {
  return (n || 0).toLocaleString('en-US');
}

/** A one-line description of an agent for tooltips. */
export function describe(agent: IAgentSummary): string {
  const when = new Date(agent.updated_at * 1000).toLocaleString();
  const runs = agent.runs === 1 ? '1 run' : `${agent.runs} runs`;
  return (
    `Agent ${agent.name}: ${agent.label}\n` +
    `${agent.checkpoints} checkpoints · ${count(agent.tokens)} tokens ` +
    `(${count(agent.prompt_tokens)} prompt, ${count(agent.completion_tokens)} completion) · ${runs}\n` +
    `Last checkpoint: ${when}`
  );
}
