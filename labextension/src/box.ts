/**
 * IVisitBox: an ipywidgets Box whose element carries `data-*` attributes and
 * can be a drop target (see drop.ts). Tiles, the viewer, offer cards and
 * progress lines use it.
 */
import { BoxModel, BoxView } from '@jupyter-widgets/controls';
import { DropSender, makeDropTarget } from './drop';
import { MODULE_NAME, MODULE_VERSION } from './version';

export class IVisitBoxModel extends BoxModel {
  defaults(): any {
    return {
      ...super.defaults(),
      _model_name: 'IVisitBoxModel',
      _model_module: MODULE_NAME,
      _model_module_version: MODULE_VERSION,
      _view_name: 'IVisitBoxView',
      _view_module: MODULE_NAME,
      _view_module_version: MODULE_VERSION,
      data: {},
      drop_target: false
    };
  }

  static serializers = { ...BoxModel.serializers };
}

export class IVisitBoxView extends BoxView {
  render(): void {
    super.render();
    this.el.classList.add('ivisit-box');
    this.updateData();
    this.updateDrop();
    this.listenTo(this.model, 'change:data', this.updateData);
    this.listenTo(this.model, 'change:drop_target', this.updateDrop);
  }

  /** Mirror the `data` trait into data-* attributes. */
  private updateData(): void {
    const data: { [key: string]: string } = this.model.get('data') || {};
    for (const key of this.shown) {
      if (!(key in data)) {
        this.el.removeAttribute(`data-${key}`);
      }
    }
    for (const [key, value] of Object.entries(data)) {
      this.el.setAttribute(`data-${key}`, String(value));
    }
    this.shown = Object.keys(data);
  }

  private updateDrop(): void {
    const wanted = !!this.model.get('drop_target');
    if (wanted && !this.undoDrop) {
      this.sender = new DropSender(this.model);
      this.undoDrop = makeDropTarget(this.el, this.sender);
      this.el.classList.add('ivisit-droptarget');
    } else if (!wanted && this.undoDrop) {
      this.stopDrop();
    }
  }

  private stopDrop(): void {
    if (this.undoDrop) {
      this.undoDrop();
      this.undoDrop = null;
    }
    if (this.sender) {
      this.sender.dispose();
      this.sender = null;
    }
    this.el.classList.remove('ivisit-droptarget');
  }

  remove(): void {
    this.stopDrop();
    super.remove();
  }

  private shown: string[] = [];
  private sender: DropSender | null = null;
  private undoDrop: (() => void) | null = null;
}
