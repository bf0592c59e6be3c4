/**
 * "Resume interrupted agents": re-run the cells of agents whose kernel died.
 *
 * Re-running an agent cell resumes its run from the last checkpoint. A fresh
 * kernel needs `%load_ext jupyter_agent` first, so the cells that load the
 * extension run before the agent cells unless the kernel already has it.
 */
import { ISessionContext, Notification } from '@jupyterlab/apputils';
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { KernelMessage } from '@jupyterlab/services';

import { CellWidget, NotebookAgents } from './agents';
import { loadsExtension } from './cells';

const LOADED_EXPRESSION = "'jupyter_agent' in get_ipython().extension_manager.loaded";

/** Whether the notebook's kernel has already loaded the extension. */
async function extensionLoaded(sessionContext: ISessionContext): Promise<boolean> {
  const kernel = sessionContext.session?.kernel;
  if (!kernel) {
    return false;
  }
  try {
    const future = kernel.requestExecute({
      code: '',
      silent: true,
      store_history: false,
      user_expressions: { loaded: LOADED_EXPRESSION }
    });
    const reply = (await future.done) as KernelMessage.IExecuteReplyMsg;
    const content = reply.content as any;
    const value = content.user_expressions?.loaded;
    return value?.status === 'ok' && value.data?.['text/plain'] === 'True';
  } catch {
    return false;
  }
}

/** The agent cells whose agent was interrupted, in notebook order. */
export function interruptedCells(agents: NotebookAgents): CellWidget[] {
  return agents.panel.content.widgets.filter(
    cell => agents.agentFor(cell)?.status === 'interrupted'
  );
}

/** Run the load-extension cells if needed, then every interrupted agent cell, in order. */
export async function resumeInterrupted(
  agents: NotebookAgents,
  sessionDialogs?: ISessionContext.IDialogs
): Promise<boolean> {
  const panel: NotebookPanel = agents.panel;
  await agents.refresh();
  const interrupted = interruptedCells(agents);
  if (!interrupted.length) {
    Notification.info('No interrupted agents in this notebook.', { autoClose: 3000 });
    return false;
  }
  const { sessionContext } = panel;
  await sessionContext.ready;
  const cells: CellWidget[] = [];
  if (!(await extensionLoaded(sessionContext))) {
    cells.push(
      ...panel.content.widgets.filter(
        cell =>
          cell.model.type === 'code' &&
          !interrupted.includes(cell) &&
          loadsExtension(cell.model.sharedModel.getSource())
      )
    );
  }
  cells.push(...interrupted);
  const names = interrupted.map(cell => agents.agentFor(cell)?.name).join(', ');
  Notification.info(`Resuming ${names}`, { autoClose: 3000 });
  const ok = await NotebookActions.runCells(panel.content, cells, sessionContext, sessionDialogs);
  await agents.refresh();
  return ok;
}
