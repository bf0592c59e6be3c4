/**
 * A saved agent timeline that reads well without its kernel.
 *
 * A timeline's output holds a view of a widget model that lives in the kernel.
 * Reopened without it, ipywidgets' renderer would show "Error displaying widget:
 * model not found". The output also carries TIMELINE_MIME (the agent's name and
 * a line of text); this renderer, preferred for it, shows that line until the
 * widget's own view renders, hands over to it then, and takes over again if the
 * view goes (its kernel restarted).
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Panel, Widget } from '@lumino/widgets';

export const TIMELINE_MIME = 'application/vnd.jupyter-agent.timeline+json';
const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
/** Before ipywidgets' renderer of widget views, which is registered at -10. */
const RANK = -20;

interface ITimelineInfo {
  agent?: string;
  text?: string;
}

type Registry = NotebookPanel['content']['rendermime'];

/** Shows the fallback line, or the widget's live view once it renders. */
export class TimelineOutput extends Panel implements IRenderMime.IRenderer {
  constructor(
    private readonly options: IRenderMime.IRendererOptions,
    private readonly registry: Registry
  ) {
    super();
    this.addClass('jp-AgentTimelineOutput');
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const info = (model.data[TIMELINE_MIME] ?? {}) as ITimelineInfo;
    const fallback = new Widget();
    fallback.addClass('jp-AgentTimelineFallback');
    fallback.node.textContent = info.text ?? `Agent timeline of ${info.agent ?? ''}`;
    this.addWidget(fallback);
    const factory = this.registry.getFactory(WIDGET_MIME);
    if (!factory || !model.data[WIDGET_MIME]) {
      return;
    }
    const view = factory.createRenderer({ ...this.options, mimeType: WIDGET_MIME });
    view.hide();
    this.addWidget(view);
    // The view's node holds only text ("Loading widget...", "Error displaying
    // widget: ...") until a widget view is added to it.
    const follow = () => {
      const live = view.node.children.length > 0;
      fallback.setHidden(live);
      view.setHidden(!live);
    };
    const observer = new MutationObserver(follow);
    observer.observe(view.node, { childList: true });
    view.disposed.connect(() => observer.disconnect());
    await view.renderModel(model);
    follow();
  }
}

/** Prefer TimelineOutput for timeline outputs of this notebook. */
export function registerTimelineFallback(notebook: NotebookPanel): void {
  const registry = notebook.content.rendermime;
  registry.addFactory(
    {
      safe: false,
      mimeTypes: [TIMELINE_MIME],
      createRenderer: options => new TimelineOutput(options, registry)
    },
    RANK
  );
}
