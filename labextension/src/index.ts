/**
 * The ivisit-nb JupyterLab extension: registers the widget models and views
 * that ivisit_nb.widgets uses for drag and drop, data-* attributes,
 * notifications and JupyterLab's file dialog.
 */
import { IJupyterWidgetRegistry } from '@jupyter-widgets/base';
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { BridgeModel } from './bridge';
import { IVisitBoxModel, IVisitBoxView } from './box';
import { CaptureModel, CaptureView } from './capture';
import { context } from './context';
import { MODULE_NAME, MODULE_VERSION } from './version';
import { VideoModel, VideoView } from './video';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'ivisit-nb:widgets',
  description: 'ivisit_nb widgets: drag and drop, notifications, file dialog',
  requires: [IJupyterWidgetRegistry],
  optional: [IDocumentManager],
  autoStart: true,
  activate: (app: JupyterFrontEnd, registry: IJupyterWidgetRegistry, docManager: IDocumentManager | null) => {
    context.app = app;
    context.docManager = docManager;
    registry.registerWidget({
      name: MODULE_NAME,
      version: MODULE_VERSION,
      exports: { IVisitBoxModel, IVisitBoxView, BridgeModel, CaptureModel, CaptureView, VideoModel, VideoView }
    });
  }
};

export default plugin;
