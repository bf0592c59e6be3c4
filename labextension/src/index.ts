/**
 * jupyter-agent for JupyterLab 4 and Notebook 7.
 *
 * - a status badge on every `%%agent` cell (done, interrupted at step k,
 *   awaiting approval, running), from the server, before any kernel runs;
 * - an "Agents" side panel with each agent's status and a compact timeline;
 * - "Resume interrupted agents", as a command and a notebook toolbar button;
 * - an agent's python calls as code cells (`%agent cells`, or the panel).
 * - a saved timeline reopened without its kernel shows a line, not an error;
 * - the lab's notification area tells when an agent of an open notebook waits
 *   for approval, pauses at its budget, is stuck, errors or finishes.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ISessionContextDialogs } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ToolbarButton } from '@jupyterlab/ui-components';
import { DisposableDelegate } from '@lumino/disposable';

import { NotebookAgents } from './agents';
import { registerTimelineFallback } from './fallback';
import { agentIcon } from './icon';
import { listenForCells } from './insert';
import { LabNotifier } from './notify';
import { AgentsPanel } from './panel';
import { resumeInterrupted } from './resume';

const PLUGIN_ID = 'jupyter-agent:plugin';

namespace CommandIDs {
  export const resume = 'jupyter-agent:resume-interrupted';
  export const showPanel = 'jupyter-agent:show-panel';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Status badges, a side panel and resume for durable agent cells.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer, ISessionContextDialogs],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    sessionDialogs: ISessionContextDialogs | null
  ) => {
    const models = new Map<NotebookPanel, NotebookAgents>();
    const resume = (agents: NotebookAgents) =>
      void resumeInterrupted(agents, sessionDialogs ?? undefined);

    const panel = new AgentsPanel(tracker, nb => models.get(nb), resume);
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, panel.id);
    const notifier = new LabNotifier(() => app.shell.activateById(panel.id));

    tracker.widgetAdded.connect((_, notebook) => {
      const agents = new NotebookAgents(notebook);
      models.set(notebook, agents);
      notifier.watch(agents);
      listenForCells(notebook);
      notebook.disposed.connect(() => models.delete(notebook));
      panel.rebind();
    });

    app.commands.addCommand(CommandIDs.resume, {
      label: 'Resume interrupted agents',
      caption: 'Re-run the cells of interrupted agents (after %load_ext jupyter_agent if needed)',
      icon: agentIcon,
      isEnabled: () => !!tracker.currentWidget,
      execute: async () => {
        const current = tracker.currentWidget;
        const agents = current ? models.get(current) : undefined;
        if (agents) {
          await resumeInterrupted(agents, sessionDialogs ?? undefined);
        }
      }
    });
    app.commands.addCommand(CommandIDs.showPanel, {
      label: 'Show agents panel',
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: CommandIDs.resume, category: 'Agents' });
    palette?.addItem({ command: CommandIDs.showPanel, category: 'Agents' });

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (notebook: NotebookPanel) => {
        const button = new ToolbarButton({
          className: 'jp-AgentResumeButton',
          icon: agentIcon,
          label: 'Resume interrupted agents',
          tooltip: 'Re-run the cells of interrupted agents',
          onClick: () => {
            const agents = models.get(notebook);
            if (agents) {
              resume(agents);
            }
          }
        });
        notebook.toolbar.insertAfter('cellType', 'jupyter-agent-resume', button);
        // Before its outputs render: a saved timeline shows a line, not an error.
        registerTimelineFallback(notebook);
        return new DisposableDelegate(() => button.dispose());
      }
    });
  }
};

export default plugin;
