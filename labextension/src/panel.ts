/**
 * The side panel: the current notebook's agents, their status and a compact
 * timeline; clicking an agent scrolls to its cell. Agents started by another
 * agent's `delegate` call are listed indented under it.
 */
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { IAgentEntry, IAgentNode, NotebookAgents, agentTree, count, describe } from './agents';
import { APIError, IJob, ITimelineEntry, agentCells, decide } from './api';
import { agentIcon } from './icon';
import { insertCells } from './insert';

/** How many checkpoints the compact timeline shows (the latest ones). */
const TIMELINE_MAX = 60;

export class AgentsPanel extends Widget {
  constructor(
    private readonly tracker: INotebookTracker,
    private readonly agentsOf: (panel: NotebookPanel) => NotebookAgents | undefined,
    private readonly resume: (agents: NotebookAgents) => void
  ) {
    super();
    this.id = 'jupyter-agent-panel';
    this.addClass('jp-AgentsPanel');
    this.title.icon = agentIcon;
    this.title.caption = 'Agents';
    tracker.currentChanged.connect(this._bind, this);
    this._bind();
  }

  /** Re-bind to the current notebook, e.g. after its agents model was created. */
  rebind(): void {
    this._bind();
  }

  private _bind(): void {
    const current = this.tracker.currentWidget;
    const agents = current ? this.agentsOf(current) : undefined;
    if (agents !== this._agents) {
      this._agents?.changed.disconnect(this._render, this);
      this._agents = agents;
      this._agents?.changed.connect(this._render, this);
    }
    this._render();
  }

  private _render(): void {
    const node = this.node;
    node.replaceChildren();
    const header = el('div', 'jp-AgentsPanel-header');
    header.appendChild(el('h2', 'jp-AgentsPanel-title', 'Agents'));
    node.appendChild(header);
    const agents = this._agents;
    if (!agents || agents.isDisposed) {
      node.appendChild(el('p', 'jp-AgentsPanel-empty', 'Open a notebook to see its agents.'));
      return;
    }
    header.appendChild(el('div', 'jp-AgentsPanel-notebook', agents.panel.context.localPath));
    const entries = agents.entries();
    if (entries.some(e => e.agent.status === 'interrupted' && e.cell)) {
      const button = el('button', 'jp-AgentsPanel-resume jp-mod-styled jp-mod-accept');
      button.textContent = 'Resume interrupted agents';
      button.addEventListener('click', () => this.resume(agents));
      header.appendChild(button);
    }
    if (agents.error) {
      node.appendChild(el('p', 'jp-AgentsPanel-error', agents.error));
    }
    if (agents.jobs.length) {
      node.appendChild(jobs(agents.jobs));
    }
    if (!entries.length) {
      const text = agents.loaded ? 'No agents in this notebook yet.' : 'Loading…';
      node.appendChild(el('p', 'jp-AgentsPanel-empty', text));
      return;
    }
    const list = el('ul', 'jp-AgentsPanel-list');
    for (const root of agentTree(entries)) {
      list.appendChild(this._item(agents, root, null, null));
    }
    node.appendChild(list);
  }

  /**
   * One agent and, nested below it, the agents it delegated to. A delegated
   * agent has no cell of its own: clicking it leads to `home`, the cell of the
   * nearest agent above it that has one.
   */
  private _item(
    agents: NotebookAgents,
    node: IAgentNode,
    parent: IAgentEntry | null,
    home: IAgentEntry | null
  ): HTMLElement {
    const { entry } = node;
    const { agent, cell } = entry;
    const item = el('li', 'jp-AgentsPanel-item');
    item.dataset.agentName = agent.name;
    item.dataset.agentStatus = agent.status;
    if (parent) {
      item.classList.add('jp-AgentsPanel-child');
      item.dataset.parentAgent = parent.agent.name;
    }
    item.title = describe(agent);
    const row = el('div', 'jp-AgentsPanel-itemBody');
    item.appendChild(row);
    const top = el('div', 'jp-AgentsPanel-itemTop');
    // Unnamed agents are known by their cell; named ones by their --name.
    const title = agent.named || !cell ? agent.name : `cell ${entry.index + 1}`;
    top.appendChild(el('span', 'jp-AgentsPanel-name', title));
    top.appendChild(el('span', `jp-AgentBadge jp-AgentBadge-${agent.status}`, agent.label));
    if (agent.what_if) {
      top.appendChild(el('span', 'jp-AgentsPanel-whatIf', agent.what_if.text));
    }
    row.appendChild(top);
    row.appendChild(el('div', 'jp-AgentsPanel-prompt', agent.prompt));
    row.appendChild(timeline(agent.timeline));
    const meta = [
      agent.checkpoints === 1 ? '1 checkpoint' : `${agent.checkpoints} checkpoints`,
      `${count(agent.tokens)} tokens`,
      agent.runs === 1 ? '1 run' : `${agent.runs} runs`
    ];
    if (parent) {
      meta.push(`delegated by ${parent.agent.name}`);
    } else if (!cell) {
      meta.push('no cell in this notebook');
    }
    row.appendChild(el('div', 'jp-AgentsPanel-meta', meta.join(' · ')));
    if (agent.status === 'awaiting_approval' && !agent.live) {
      item.appendChild(decisionButtons(agents, agent.name));
    }
    const target = cell ? entry : home;
    if (target) {
      row.classList.add('jp-mod-clickable');
      row.addEventListener('click', () => void scrollToCell(agents, target));
    }
    if (cell && agent.steps > 0) {
      const button = el('button', 'jp-AgentsPanel-cells jp-mod-styled', 'Insert as cells');
      button.title = "Insert the agent's python calls below its cell, with their outputs";
      button.addEventListener('click', event => {
        event.stopPropagation(); // not a click on the row, which scrolls to the cell
        void insertFromStore(agents, agent.name, button);
      });
      row.appendChild(button);
    }
    if (node.children.length) {
      const children = el('ul', 'jp-AgentsPanel-children');
      for (const child of node.children) {
        children.appendChild(this._item(agents, child, entry, target));
      }
      item.appendChild(children);
    }
    return item;
  }

  private _agents: NotebookAgents | undefined;
}

function el(tag: string, className: string, text?: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/**
 * Approve / Reject for an agent waiting on a call: stored on the server with
 * no kernel running the agent, applied when it next runs.
 */
function decisionButtons(agents: NotebookAgents, name: string): HTMLElement {
  const bar = el('div', 'jp-AgentsPanel-decision');
  const said = el('span', 'jp-AgentsPanel-decisionSaid');
  for (const action of ['approve', 'reject'] as const) {
    const button = el(
      'button',
      `jp-AgentsPanel-${action} jp-mod-styled ${action === 'approve' ? 'jp-mod-accept' : 'jp-mod-reject'}`,
      action === 'approve' ? 'Approve' : 'Reject'
    ) as HTMLButtonElement;
    button.addEventListener('click', async event => {
      event.stopPropagation();
      bar.querySelectorAll('button').forEach(b => ((b as HTMLButtonElement).disabled = true));
      try {
        await decide(agents.panel.context.localPath, name, action);
        said.textContent = `${action === 'approve' ? 'Approved' : 'Rejected'}: runs when the agent next runs.`;
      } catch (error) {
        said.textContent = error instanceof APIError ? error.message : String(error);
      }
      void agents.refresh();
    });
    bar.appendChild(button);
  }
  bar.appendChild(said);
  return bar;
}

function timeline(entries: ITimelineEntry[]): HTMLElement {
  const bar = el('div', 'jp-AgentTimeline');
  for (const entry of entries.slice(-TIMELINE_MAX)) {
    const tick = el('span', `jp-AgentTimeline-tick jp-AgentTimeline-${entry.kind}`);
    tick.dataset.status = entry.status;
    tick.title = `checkpoint ${entry.step}: ${entry.kind.replace(/_/g, ' ')} (${entry.status.replace(/_/g, ' ')})`;
    bar.appendChild(tick);
  }
  return bar;
}

/** Insert an agent's python calls, as the server reads them, below its cell. */
async function insertFromStore(
  agents: NotebookAgents,
  name: string,
  button: HTMLElement
): Promise<void> {
  try {
    const data = await agentCells(agents.panel.context.localPath, name);
    const count = insertCells(agents.panel, data);
    button.textContent = count ? `Inserted ${count} cells` : 'No python calls';
  } catch (error) {
    button.textContent = `Not inserted: ${(error as Error).message}`;
  }
}

async function scrollToCell(agents: NotebookAgents, entry: IAgentEntry): Promise<void> {
  const { panel } = agents;
  const notebook = panel.content;
  const index = notebook.widgets.indexOf(entry.cell!);
  if (index < 0) {
    return;
  }
  notebook.activeCellIndex = index;
  notebook.deselectAll();
  await notebook.scrollToItem(index, 'auto');
  const cell = notebook.widgets[index];
  cell.addClass('jp-AgentCell-flash');
  window.setTimeout(() => cell.removeClass('jp-AgentCell-flash'), 1200);
}

/** The worker pool's jobs of the notebook: one line each, its status as a badge. */
function jobs(list: IJob[]): HTMLElement {
  const section = el('div', 'jp-AgentsPanel-jobs');
  section.appendChild(el('h3', 'jp-AgentsPanel-jobsTitle', 'Jobs'));
  const items = el('ul', 'jp-AgentsPanel-jobList');
  for (const job of list) {
    const item = el('li', 'jp-AgentsPanel-job');
    item.dataset.jobStatus = job.status;
    item.title = job.error ?? `submitted ${job.submitted ?? ''}`;
    item.appendChild(
      el('span', 'jp-AgentsPanel-jobName', `${job.job} · ${job.agent ?? 'all agents'}`)
    );
    item.appendChild(el('span', `jp-AgentBadge jp-AgentBadge-job-${job.status}`, job.status));
    if (job.error) {
      item.appendChild(el('div', 'jp-AgentsPanel-jobError', job.error));
    }
    items.appendChild(item);
  }
  section.appendChild(items);
  return section;
}
