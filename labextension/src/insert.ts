/**
 * An agent's python calls as code cells: inserted below its cell, with the
 * outputs they had, or shown as that cell's output instead.
 *
 * The cells come from the kernel (`%agent cells NAME` sends them over the
 * `jupyter_agent.cells` comm) or from the server (the panel's "Insert as
 * cells", `GET /agents/NAME/cells`); both are nbformat code cells.
 */
import type { ICodeCellModel } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';
import type { Kernel } from '@jupyterlab/services';

/** The comm target `%agent cells` opens (`jupyter_agent.kernel.cells.COMM_TARGET`). */
export const COMM_TARGET = 'jupyter_agent.cells';

/** An nbformat code cell as the kernel and the server send it. */
export interface ICodeCellJSON {
  cell_type: 'code';
  source: string;
  outputs: any[];
  execution_count: number | null;
  metadata: Record<string, any>;
}

/** What `%agent cells` sends, and what `GET /agents/NAME/cells` answers. */
export interface IAgentCells {
  agent: string;
  cell_id: string | null;
  cells: ICodeCellJSON[];
  replace?: boolean;
}

/**
 * Insert the cells below the agent's cell (or, with `replace`, show them as its
 * output); without that cell in the notebook, below the active cell. Returns how many.
 */
export function insertCells(panel: NotebookPanel, data: IAgentCells): number {
  const notebook = panel.content;
  const model = notebook.model;
  if (!model || !data.cells.length) {
    return 0;
  }
  let index = data.cell_id ? notebook.widgets.findIndex(c => c.model.id === data.cell_id) : -1;
  if (index < 0) {
    index = notebook.activeCellIndex;
  }
  const target = notebook.widgets[index]?.model;
  if (data.replace && target?.type === 'code') {
    const outputs = (target as ICodeCellModel).outputs;
    outputs.clear();
    for (const cell of data.cells) {
      outputs.add({
        output_type: 'display_data',
        data: { 'text/markdown': '```python\n' + cell.source + '\n```' },
        metadata: {}
      });
      for (const output of cell.outputs) {
        outputs.add(output);
      }
    }
    return data.cells.length;
  }
  model.sharedModel.insertCells(
    index + 1,
    data.cells.map(cell => ({
      cell_type: 'code' as const,
      source: cell.source,
      outputs: cell.outputs,
      execution_count: cell.execution_count ?? null,
      metadata: cell.metadata ?? {}
    }))
  );
  return data.cells.length;
}

/** Answer `%agent cells` in the notebook's kernels, now and after every kernel change. */
export function listenForCells(panel: NotebookPanel): void {
  const register = (kernel: Kernel.IKernelConnection | null | undefined) => {
    // The kernel closes the comm once it has sent the cells.
    kernel?.registerCommTarget(COMM_TARGET, (_, msg) => {
      insertCells(panel, msg.content.data as unknown as IAgentCells);
    });
  };
  const session = panel.sessionContext;
  session.kernelChanged.connect((_, change) => register(change.newValue));
  void session.ready.then(() => register(session.session?.kernel));
}
