/**
 * The lab's notification area tells of agents that stop to wait or stop for good.
 *
 * The same events as the webhooks (`c.AgentMagics.notify`): an agent of an open
 * notebook that waits for approval, pauses at its budget, is stuck, errors or
 * finishes. Each event is a run's last checkpoint, so it is keyed by the run and
 * that checkpoint's number and shown once. What an agent's status already was
 * when its notebook was opened is not news (its badge shows it): only changes
 * seen while the notebook is open are told.
 */
import { Notification } from '@jupyterlab/apputils';

import { IAgentSummary } from './api';
import { NotebookAgents } from './agents';

/** The statuses that are an event, and how the notification area shows each. */
const EVENTS: Partial<Record<IAgentSummary['status'], Notification.TypeOptions>> = {
  awaiting_approval: 'warning',
  budget: 'warning',
  stuck: 'warning',
  error: 'error',
  done: 'success'
};

/** How long a toast stays up; it stays in the notification center after. */
const TOAST_MS = 10000;

export class LabNotifier {
  /** ``showAgents``: the toast's action, which opens the Agents panel. */
  constructor(private readonly _showAgents: () => void) {}

  /** Follow one notebook's agents until it closes. */
  watch(agents: NotebookAgents): void {
    let baseline = true;
    const changed = () => {
      if (!agents.loaded) {
        return;
      }
      for (const agent of agents.entries().map(e => e.agent)) {
        const key = eventKey(agent);
        if (key && !this._seen.has(key)) {
          this._seen.add(key);
          if (!baseline) {
            this._tell(agents.panel.context.localPath, agent);
          }
        }
      }
      baseline = false;
    };
    agents.changed.connect(changed);
    agents.panel.disposed.connect(() => agents.changed.disconnect(changed));
  }

  private _tell(path: string, agent: IAgentSummary): void {
    const where = path.split('/').pop() || path;
    Notification.emit(`Agent ${agent.name} in ${where}: ${agent.label}`, EVENTS[agent.status], {
      autoClose: TOAST_MS,
      actions: [{ label: 'Show agents', callback: () => this._showAgents() }]
    });
  }

  private _seen = new Set<string>();
}

/**
 * The event an agent's latest run stopped at, as a key (its run and checkpoint), or null.
 * A delegated agent's end is its parent's to tell; its question is its own.
 */
export function eventKey(agent: IAgentSummary): string | null {
  if (!EVENTS[agent.status] || !agent.run_id) {
    return null;
  }
  if (agent.parent_agent && agent.status !== 'awaiting_approval') {
    return null;
  }
  return `${agent.run_id}:${agent.step}`;
}
