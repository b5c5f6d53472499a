/**
 * VideoModel / VideoView: the newest frame of a video feed, as JPEG, with feedback
 * (Python side: ivisit_nb/widgets/video.py; design and figures: docs/video.md).
 *
 * Kernel -> browser, one custom message per frame:
 *   {f: seq, w, h, k: 0|1} + one buffer, the JPEG. `k: 1` marks the frame that filled the
 *   kernel's window of frames in flight; it is acknowledged on receipt, before decoding,
 *   together with every other video widget's newest frame (at most one ack per ACK_GAP ms).
 * Browser -> kernel (small JSON, read by the kernel straight off the comm):
 *   {a: seq, d: shown, x: dropped, t, o}
 *                                     ack: frames up to `seq` arrived; `d` frames were shown and
 *                                     `x` dropped unseen since the previous report; `t` is
 *                                     Date.now() (the kernel splits the round trip with it);
 *                                     `o`: [[model id, seq, d, x], ...], the same for the
 *                                     kernel's other video widgets in this page (AckHub)
 *   {p: page, hello: 1, v, w}        this page's model exists (after a reload too)
 *   {p: page, v, w, d, x}            a view of this page came on screen or left it (`v`), the
 *                                     widest visible view is `w` device pixels wide
 *   {p: page, bye: 1}                the page's last view was removed
 *
 * The model decodes each frame once (ImageDecoder, or createImageBitmap without WebCodecs), one
 * at a time; while one decodes, newer ones replace each other in a one-slot box (newest wins;
 * the others count as dropped). Decoded frames wait for an animation frame, at most 2, and each
 * animation frame draws one into every visible view's <canvas class="ivisit-frame">: frames
 * that arrive together are each painted, not drawn over before the screen shows them.
 * Views that are off screen (IntersectionObserver) or in a hidden page (`document.hidden`)
 * decode nothing; when no view of a model is on screen, the kernel stops encoding. A view's
 * width is watched too (ResizeObserver), so frames are encoded at the size shown.
 */
import { DOMWidgetModel, DOMWidgetView } from '@jupyter-widgets/base';
import { MODULE_NAME, MODULE_VERSION } from './version';

interface Frame {
  seq: number;
  width: number;
  height: number;
  data: ArrayBuffer | ArrayBufferView;
}

/** Decoded frames waiting for an animation frame (the kernel has at most 2 in flight). */
const READY_FRAMES = 2;

/** A decoded frame: drawn into each view's canvas, then closed. */
type Decoded = ImageBitmap | { close(): void };

/**
 * Decode a JPEG off the main thread: WebCodecs' ImageDecoder straight from the message's
 * buffer where the page has it (secure contexts: https, localhost), else createImageBitmap
 * of a Blob. Neither goes through an object URL or an <img>'s loading pipeline (measured:
 * Blob + createObjectURL + <img> cost 16 % of the page's main thread at 4 x 25 fps).
 */
async function decodeJpeg(data: ArrayBuffer | ArrayBufferView): Promise<Decoded> {
  const Decoder = (window as any).ImageDecoder;
  if (Decoder) {
    const decoder = new Decoder({ data, type: 'image/jpeg' });
    try {
      return (await decoder.decode()).image;
    } finally {
      decoder.close();
    }
  }
  return createImageBitmap(new Blob([data as BlobPart], { type: 'image/jpeg' }));
}

/** At most one page ack every ACK_GAP ms (measured in bench/video.py; docs/video.md). */
const ACK_GAP = 20;

/**
 * The acks of one kernel's video widgets in this page travel together: a frame that asks for an
 * ack (`k: 1`) makes the hub send one message that acknowledges, for every widget, the newest
 * frame that arrived. So a tile's credit also comes back with its neighbours' acks, and the
 * kernel gets fewer messages than one per asking frame. The window stays per tile.
 */
class AckHub {
  static of(manager: object): AckHub {
    let hub = AckHub.hubs.get(manager);
    if (!hub) {
      hub = new AckHub();
      AckHub.hubs.set(manager, hub);
    }
    return hub;
  }

  request(): void {
    if (this.timer) {
      return;
    }
    const wait = this.last + ACK_GAP - performance.now();
    if (wait <= 0) {
      this.flush();
    } else {
      this.timer = window.setTimeout(() => this.flush(), wait);
    }
  }

  private flush(): void {
    this.timer = 0;
    this.last = performance.now();
    const due = [...this.models].filter(m => m.unacked());
    if (due.length) {
      const [carrier, ...others] = due;
      carrier.sendAck(others.map(m => m.ackEntry()));
    }
  }

  readonly models = new Set<VideoModel>();
  private timer = 0;
  private last = -Infinity;
  private static hubs = new WeakMap<object, AckHub>();
}

export class VideoModel extends DOMWidgetModel {
  defaults(): any {
    return {
      ...super.defaults(),
      _model_name: 'VideoModel',
      _model_module: MODULE_NAME,
      _model_module_version: MODULE_VERSION,
      _view_name: 'VideoView',
      _view_module: MODULE_NAME,
      _view_module_version: MODULE_VERSION,
      width: 320,
      active: true,
      placeholder: 'no video'
    };
  }

  initialize(attributes: any, options: any): void {
    super.initialize(attributes, options);
    this.latest = null;
    this.highest = 0;
    this.ackedUpTo = 0;
    this.decoding = false;
    this.waiting = null;
    this.ready = [];
    this.painting = false;
    this.videoViews = new Set();
    this.shown = 0;
    this.dropped = 0;
    this.sent = null;
    this.page = Math.random().toString(36).slice(2, 10);
    this.hub = AckHub.of(this.widget_manager);
    this.hub.models.add(this);
    this.on('msg:custom', this.onMessage, this);
    this.onVisibility = () => this.reportVisibility();
    document.addEventListener('visibilitychange', this.onVisibility);
    this.send({ p: this.page, hello: 1, v: false, w: 0 }, {});
  }

  /** A frame from the kernel: acknowledge it if asked to, then hand it to the views. */
  private onMessage(content: any, buffers: (ArrayBuffer | ArrayBufferView)[] | undefined): void {
    if (!content || typeof content.f !== 'number' || !buffers || !buffers.length) {
      return;
    }
    this.highest = Math.max(this.highest, content.f);
    if (content.k) {
      this.hub.request();
    }
    this.offer({ seq: content.f, width: content.w, height: content.h, data: buffers[0] });
  }

  /** True if frames arrived since this model's last ack. */
  unacked(): boolean {
    return this.highest > this.ackedUpTo;
  }

  /** This model's part of a page ack: [model id, newest frame arrived, shown, dropped]. */
  ackEntry(): [string, number, number, number] {
    const entry: [string, number, number, number] = [this.model_id, this.highest, this.shown, this.dropped];
    this.ackedUpTo = this.highest;
    this.shown = 0;
    this.dropped = 0;
    return entry;
  }

  /** Send the page's ack on this model's comm: ours, plus `others` for the other tiles. */
  sendAck(others: [string, number, number, number][]): void {
    const [, a, d, x] = this.ackEntry();
    this.send({ a, d, x, t: Date.now(), o: others }, {});
  }

    /** Decode `frame` for the views on screen: one decode at a time, newer frames replace the
   * one waiting (newest wins; the replaced and the unseen count as dropped). */
  offer(frame: Frame): void {
    this.latest = frame;
    if (!this.onScreen()) {
      this.dropped += 1;
      return;
    }
    if (this.decoding) {
      if (this.waiting) {
        this.dropped += 1;
      }
      this.waiting = frame;
      return;
    }
    void this.decode(frame);
  }

  private async decode(frame: Frame): Promise<void> {
    this.decoding = true;
    try {
      const image = await decodeJpeg(frame.data);
      this.ready.push({ image, frame });
      while (this.ready.length > READY_FRAMES) {
        this.ready.shift()?.image.close();
        this.dropped += 1;
      }
      this.schedulePaint();
    } catch (err) {
      this.dropped += 1;
      console.warn('ivisit-nb: a video frame could not be decoded', err);
    }
    this.decoding = false;
    const next = this.waiting;
    this.waiting = null;
    if (next) {
      this.offer(next);
    }
  }

  private schedulePaint(): void {
    if (!this.painting && this.ready.length) {
      this.painting = true;
      requestAnimationFrame(() => this.paint());
    }
  }

  /** One decoded frame per animation frame, oldest first: frames that arrive together (the
   * kernel sends them in pairs, one ack per two) are each painted, not drawn over unseen. */
  private paint(): void {
    this.painting = false;
    const next = this.ready.shift();
    if (next) {
      let drawn = false;
      for (const view of this.videoViews) {
        drawn = view.draw(next.image, next.frame) || drawn;
      }
      next.image.close();
      if (drawn) {
        this.shown += 1;
      } else {
        this.dropped += 1;
      }
    }
    this.schedulePaint();
  }

  private onScreen(): boolean {
    if (document.hidden) {
      return false;
    }
    for (const view of this.videoViews) {
      if (view.onScreen) {
        return true;
      }
    }
    return false;
  }

  attachView(view: VideoView): void {
    this.videoViews.add(view);
    this.reportVisibility();
  }

  detachView(view: VideoView): void {
    this.videoViews.delete(view);
    if (this.videoViews.size === 0) {
      this.sent = null;
      this.send({ p: this.page, bye: 1, d: this.shown, x: this.dropped }, {});
      this.shown = 0;
      this.dropped = 0;
    } else {
      this.reportVisibility();
    }
  }

  /** Tell the kernel whether a view is on screen, and how wide (device pixels), when that changed. */
  reportVisibility(): void {
    let width = 0;
    let visible = false;
    if (!document.hidden) {
      for (const view of this.videoViews) {
        if (view.onScreen) {
          visible = true;
          width = Math.max(width, view.pixelWidth());
        }
      }
    }
    const key = `${visible}:${width}`;
    if (key !== this.sent) {
      this.sent = key;
      this.send({ p: this.page, v: visible, w: width, d: this.shown, x: this.dropped }, {});
      this.shown = 0;
      this.dropped = 0;
    }
  }

  destroy(options?: any): any {
    this.hub.models.delete(this);
    document.removeEventListener('visibilitychange', this.onVisibility);
    for (const { image } of this.ready.splice(0)) {
      image.close();
    }
    return super.destroy(options);
  }

  static serializers = { ...DOMWidgetModel.serializers };

  // Backbone calls initialize() from inside the constructor, before class field initializers
  // run, and those would then overwrite what initialize() set: so these are only declared here
  // and set in initialize().
  declare latest: Frame | null;
  declare private highest: number; // newest frame that arrived
  declare private ackedUpTo: number; // newest frame this page acknowledged
  declare private hub: AckHub;
  declare private decoding: boolean;
  declare private waiting: Frame | null;
  declare private ready: { image: Decoded; frame: Frame }[];
  declare private painting: boolean;
  declare private page: string;
  declare private videoViews: Set<VideoView>;
  declare private shown: number;
  declare private dropped: number;
  declare private sent: string | null;
  declare private onVisibility: () => void;
}

export class VideoView extends DOMWidgetView {
  render(): void {
    this.el.classList.add('ivisit-video', 'ivisit-video-live');
    this.canvas = document.createElement('canvas');
    this.canvas.className = 'ivisit-frame';
    this.note = document.createElement('div');
    this.note.className = 'ivisit-novideo';
    this.el.append(this.canvas, this.note);
    this.update();
    this.listenTo(this.model, 'change:width change:active change:placeholder', this.update);
    this.observer = new IntersectionObserver(
      entries => {
        for (const entry of entries) {
          this.onScreen = entry.isIntersecting;
        }
        this.vm.reportVisibility();
        const latest = this.vm.latest;
        if (this.onScreen && latest && latest.seq !== this.showing) {
          this.vm.offer(latest);
        }
      },
      { threshold: 0 }
    );
    this.observer.observe(this.el);
    this.resizer = new ResizeObserver(() => this.vm.reportVisibility());
    this.resizer.observe(this.el);
    this.vm.attachView(this);
  }

  update(): void {
    const width = Number(this.model.get('width')) || 320;
    this.el.style.width = `${width}px`;
    this.note.textContent = String(this.model.get('placeholder') || '');
    this.showFrames(this.hasFrame && !!this.model.get('active'));
  }

  /** Width of the view in device pixels (what the kernel should encode for). */
  pixelWidth(): number {
    const css = this.el.clientWidth || Number(this.model.get('width')) || 320;
    return Math.round(css * (window.devicePixelRatio || 1));
  }

  /** Draw a decoded frame; false when this view is off screen. */
  draw(image: Decoded, frame: Frame): boolean {
    if (!this.onScreen || document.hidden) {
      return false;
    }
    if (this.canvas.width !== frame.width || this.canvas.height !== frame.height) {
      this.canvas.width = frame.width;
      this.canvas.height = frame.height;
      this.context = null;
    }
    if (!this.context) {
      this.context = this.canvas.getContext('2d', { alpha: false });
    }
    this.context?.drawImage(image as CanvasImageSource, 0, 0, frame.width, frame.height);
    this.showing = frame.seq;
    if (!this.hasFrame) {
      this.hasFrame = true;
      this.update();
    }
    return true;
  }

  private showFrames(on: boolean): void {
    this.canvas.style.display = on ? '' : 'none';
    this.note.style.display = on ? 'none' : '';
  }

  remove(): any {
    this.observer?.disconnect();
    this.resizer?.disconnect();
    this.onScreen = false;
    this.vm.detachView(this);
    return super.remove();
  }

  private get vm(): VideoModel {
    return this.model as unknown as VideoModel;
  }

  onScreen = false;
  private canvas!: HTMLCanvasElement;
  private context: CanvasRenderingContext2D | null = null;
  private note!: HTMLDivElement;
  private observer: IntersectionObserver | null = null;
  private resizer: ResizeObserver | null = null;
  private showing = -1;
  private hasFrame = false;
}
