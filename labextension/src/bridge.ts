/**
 * BridgeModel: a model-only widget through which the kernel reaches
 * JupyterLab itself. One per session; it needs no view, so it acts once per
 * model however many times the panel is displayed.
 *
 * From the kernel:
 *   {action: 'notify', key, message, actions: [label, ...]}  a notification that
 *       stays until answered; a click sends {event: 'action', key, index}
 *   {action: 'dismiss', key}                                  remove it
 *   {action: 'pick', key, path, title}                        JupyterLab's file dialog
 *       at `path` (relative to the server root); answers {event: 'picked', key, paths, root}
 * To the kernel, once the model exists: {event: 'hello', root}.
 *
 * A notification's buttons get the caption (their title, shown as a tooltip)
 * "iVisit: LABEL". JupyterLab gives no way to put a class on a toast, so
 * style/index.css finds iVisit's notifications by that caption and lays their
 * buttons out so that every label reads whole (see NOTE_CAPTION_PREFIX).
 */
import { WidgetModel } from '@jupyter-widgets/base';
import { Notification } from '@jupyterlab/apputils';
import { FileDialog } from '@jupyterlab/filebrowser';
import { context, localPath, serverRoot } from './context';
import { MODULE_NAME, MODULE_VERSION } from './version';

/**
 * Prefix of the caption (the `title`) of every button of our notifications;
 * style/index.css selects `.jp-toast-button[title^="iVisit: "]`. Keep both in step.
 */
export const NOTE_CAPTION_PREFIX = 'iVisit: ';

export class BridgeModel extends WidgetModel {
  defaults(): any {
    return {
      ...super.defaults(),
      _model_name: 'BridgeModel',
      _model_module: MODULE_NAME,
      _model_module_version: MODULE_VERSION,
      _view_name: null,
      _view_module: null,
      _view_module_version: ''
    };
  }

  initialize(attributes: any, options: any): void {
    super.initialize(attributes, options);
    this.on('msg:custom', this.onMessage, this);
    this.send({ event: 'hello', root: serverRoot() }, {});
  }

  private onMessage(content: any): void {
    switch (content && content.action) {
      case 'notify':
        this.notify(String(content.key), String(content.message), content.actions || []);
        break;
      case 'dismiss':
        this.dismiss(String(content.key));
        break;
      case 'pick':
        void this.openDialog(String(content.key), String(content.path || ''), String(content.title || 'Load files'));
        break;
    }
  }

  private notify(key: string, message: string, labels: string[]): void {
    if (this.notes.has(key)) {
      return; // already shown (the kernel re-sends pending ones after a reload)
    }
    const actions = labels.map((label, index) => ({
      label,
      caption: NOTE_CAPTION_PREFIX + label,
      displayType: (index === 1 ? 'accent' : 'default') as Notification.ActionDisplayType,
      callback: () => {
        this.notes.delete(key);
        this.send({ event: 'action', key, index }, {});
      }
    }));
    this.notes.set(key, Notification.info(message, { autoClose: false, actions }));
  }

  private dismiss(key: string): void {
    const id = this.notes.get(key);
    if (id !== undefined) {
      this.notes.delete(key);
      Notification.dismiss(id);
    }
  }

  private async openDialog(key: string, path: string, title: string): Promise<void> {
    const manager = context.docManager;
    if (!manager) {
      this.send({ event: 'picked', key, paths: [], root: serverRoot(), error: 'no document manager' }, {});
      return;
    }
    const result = await FileDialog.getOpenFiles({ manager, title, defaultPath: path });
    const paths = result.button.accept && result.value ? result.value.filter(m => m.type !== 'directory').map(m => localPath(m.path)) : [];
    this.send({ event: 'picked', key, paths, root: serverRoot() }, {});
  }

  private notes = new Map<string, string>();
}
