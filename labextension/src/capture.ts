/**
 * The browser's camera, streamed to the kernel (the Python side is
 * ivisit_nb/media/camera.py, `Camera`).
 *
 * CaptureModel owns the capture: getUserMedia, then at `fps` the newest camera
 * picture is drawn into a `width` x `height` canvas, encoded as JPEG and sent as
 * a binary custom message {event: 'frame', seq, width, height, t} + [jpeg].
 * The kernel answers {action: 'ack', seq} once the frame is decoded. At most
 * `credits` frames are in flight: a tick that finds no credit waits for the
 * next ack (and counts as skipped if another tick comes first), so a slow
 * kernel lowers the rate and never builds a queue here. A frame not acked
 * within ACK_TIMEOUT_MS gives its credit back (a lost message or a restarted
 * kernel must not stop the camera for good).
 *
 * With `new_only` (the default) only new camera pictures are sent: a tick
 * waits for the next picture (requestVideoFrameCallback), so asking for more
 * than the camera gives repeats nothing. Without it the newest picture is sent
 * at every tick (to measure the path itself).
 *
 * The capture runs while at least one CaptureView shows the model and `active`
 * is true. Each view shows a small preview and a status line; several views
 * share one camera.
 */
import { DOMWidgetModel, DOMWidgetView } from '@jupyter-widgets/base';
import { MODULE_NAME, MODULE_VERSION } from './version';

const ACK_TIMEOUT_MS = 3000;
const STATUS_EVERY_MS = 1000;
const RATE_WINDOW_MS = 2000;

export class CaptureModel extends DOMWidgetModel {
  defaults(): any {
    return {
      ...super.defaults(),
      _model_name: 'CaptureModel',
      _model_module: MODULE_NAME,
      _model_module_version: MODULE_VERSION,
      _view_name: 'CaptureView',
      _view_module: MODULE_NAME,
      _view_module_version: MODULE_VERSION,
      width: 320,
      height: 240,
      fps: 15,
      quality: 0.8,
      credits: 2,
      max_bytes: 2 * 1024 * 1024,
      active: true,
      new_only: true,
      status: '',
      skipped: 0
    };
  }

  initialize(attributes: any, options: any): void {
    super.initialize(attributes, options);
    this.on('msg:custom', this.onMessage, this);
    this.on('change:active change:width change:height change:fps', this.restart, this);
  }

  /** The camera's stream while capturing, for the previews. */
  stream: MediaStream | null = null;
  /** The newest status line. */
  statusText = 'camera: starting';

  attach(): void {
    this.cap_views += 1;
    if (this.cap_views === 1) {
      void this.start();
    }
  }

  detach(): void {
    this.cap_views = Math.max(0, this.cap_views - 1);
    if (this.cap_views === 0) {
      this.stop();
    }
  }

  private restart(): void {
    this.stop();
    if (this.cap_views > 0) {
      void this.start();
    }
  }

  private async start(): Promise<void> {
    if (this.cap_running || !this.get('active')) {
      if (!this.get('active')) {
        this.setStatus('camera: stopped');
      }
      return;
    }
    this.cap_running = true;
    const generation = ++this.cap_generation;
    const width = Number(this.get('width'));
    const height = Number(this.get('height'));
    const fps = Math.max(0.1, Number(this.get('fps')));
    let stream: MediaStream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: Math.max(fps, 15) } }
      });
    } catch (err) {
      this.cap_running = false;
      const message = `camera unavailable: ${err}`;
      this.setStatus(message);
      this.send({ event: 'error', message }, {});
      return;
    }
    if (generation !== this.cap_generation) {
      stream.getTracks().forEach(t => t.stop()); // stopped while we waited for the camera
      return;
    }
    this.stream = stream;
    const video = document.createElement('video');
    video.muted = true;
    video.playsInline = true;
    video.srcObject = stream;
    try {
      await video.play();
    } catch (err) {
      /* it still delivers pictures to drawImage once data arrives */
    }
    this.cap_video = video;
    if ('requestVideoFrameCallback' in video) {
      const onPicture = () => {
        if (generation !== this.cap_generation) {
          return;
        }
        this.cap_pictures += 1;
        if (this.cap_due) {
          void this.trySend(generation);
        }
        video.requestVideoFrameCallback(onPicture);
      };
      video.requestVideoFrameCallback(onPicture);
      this.cap_rvfc = true;
    }
    this.cap_canvas = document.createElement('canvas');
    this.cap_canvas.width = width;
    this.cap_canvas.height = height;
    this.cap_ctx = this.cap_canvas.getContext('2d');
    this.trigger('ivisit:stream', stream);
    const period = 1000 / fps;
    const begin = performance.now();
    let n = 0;
    const tick = () => {
      if (generation !== this.cap_generation) {
        return;
      }
      if (this.cap_due && this.cap_inFlight.size >= Number(this.get('credits'))) {
        this.cap_skipped += 1; // the previous tick is still waiting for a credit
      }
      this.cap_due = true;
      this.expire();
      void this.trySend(generation);
      n += 1;
      const next = begin + n * period;
      const now = performance.now();
      if (next < now - 1000) {
        n = Math.ceil((now - begin) / period); // far behind (a busy page): skip ahead, don't burst
      }
      this.cap_timer = window.setTimeout(tick, Math.max(0, begin + n * period - performance.now()));
    };
    tick();
    this.cap_statusTimer = window.setInterval(() => this.report(width, height), STATUS_EVERY_MS);
  }

  private stop(): void {
    this.cap_generation += 1;
    this.cap_running = false;
    window.clearTimeout(this.cap_timer);
    window.clearInterval(this.cap_statusTimer);
    if (this.stream) {
      this.stream.getTracks().forEach(t => t.stop());
      this.stream = null;
      this.trigger('ivisit:stream', null);
    }
    if (this.cap_video) {
      this.cap_video.srcObject = null;
      this.cap_video = null;
    }
    this.cap_inFlight.clear();
    this.cap_due = false;
    this.cap_encoding = false;
    this.setStatus(this.get('active') ? 'camera: off' : 'camera: stopped');
  }

  /** Send the newest picture if a tick is due, a credit is free and no encode is running. */
  private async trySend(generation: number): Promise<void> {
    const video = this.cap_video;
    const ctx = this.cap_ctx;
    const canvas = this.cap_canvas;
    if (!this.cap_due || this.cap_encoding || !video || !ctx || !canvas) {
      return;
    }
    if (this.cap_inFlight.size >= Number(this.get('credits'))) {
      return; // the next ack calls us again
    }
    if (video.readyState < 2) {
      return; // no picture yet
    }
    if (this.cap_rvfc && this.get('new_only') && this.cap_pictures === this.cap_lastPicture) {
      return; // the camera has no new picture yet: the next one calls us
    }
    this.cap_lastPicture = this.cap_pictures;
    this.cap_due = false;
    this.cap_encoding = true;
    const seq = ++this.cap_seq;
    this.cap_inFlight.set(seq, performance.now());
    try {
      ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
      const blob = await new Promise<Blob | null>(resolve =>
        canvas.toBlob(resolve, 'image/jpeg', Number(this.get('quality')))
      );
      if (!blob || generation !== this.cap_generation) {
        this.cap_inFlight.delete(seq);
        return;
      }
      if (blob.size > Number(this.get('max_bytes'))) {
        this.cap_inFlight.delete(seq);
        this.cap_oversize += 1;
        return;
      }
      const buffer = await blob.arrayBuffer();
      if (generation !== this.cap_generation) {
        this.cap_inFlight.delete(seq);
        return;
      }
      this.send({ event: 'frame', seq, width: canvas.width, height: canvas.height, t: Date.now() }, {}, [buffer]);
      this.cap_sent += 1;
    } catch (err) {
      this.cap_inFlight.delete(seq);
      this.cap_errors += 1;
    } finally {
      this.cap_encoding = false;
    }
    if (this.cap_due && generation === this.cap_generation) {
      void this.trySend(generation); // a tick came while we encoded
    }
  }

  private onMessage(content: any): void {
    if (content && content.action === 'ack') {
      if (this.cap_inFlight.delete(Number(content.seq))) {
        this.cap_acks.push(performance.now());
      }
      void this.trySend(this.cap_generation);
    }
  }

  /** Credits of frames whose ack never came back. */
  private expire(): void {
    const now = performance.now();
    for (const [seq, at] of this.cap_inFlight) {
      if (now - at > ACK_TIMEOUT_MS) {
        this.cap_inFlight.delete(seq);
        this.cap_lost += 1;
      }
    }
  }

  private report(width: number, height: number): void {
    const now = performance.now();
    while (this.cap_acks.length && this.cap_acks[0] < now - RATE_WINDOW_MS) {
      this.cap_acks.shift();
    }
    const rate = this.cap_acks.length > 1 ? (this.cap_acks.length - 1) / ((now - this.cap_acks[0]) / 1000) : 0;
    let text = `camera ${width}x${height}: ${rate.toFixed(1)} fps to the kernel, ${this.cap_sent} sent, ${this.cap_skipped} skipped`;
    if (this.cap_lost) {
      text += `, ${this.cap_lost} unacknowledged`;
    }
    if (this.cap_oversize) {
      text += `, ${this.cap_oversize} too big`;
    }
    if (this.cap_errors) {
      text += `, ${this.cap_errors} failed`;
    }
    this.setStatus(text);
    if (this.get('skipped') !== this.cap_skipped) {
      this.set('skipped', this.cap_skipped);
      this.save_changes();
    }
  }

  private setStatus(text: string): void {
    this.statusText = text;
    this.trigger('ivisit:status', text);
    if (this.get('status') !== text) {
      this.set('status', text);
      this.save_changes();
    }
  }

  private cap_views = 0;
  private cap_running = false;
  private cap_generation = 0;
  private cap_video: HTMLVideoElement | null = null;
  private cap_canvas: HTMLCanvasElement | null = null;
  private cap_ctx: CanvasRenderingContext2D | null = null;
  private cap_timer = 0;
  private cap_statusTimer = 0;
  private cap_due = false;
  private cap_rvfc = false;
  private cap_pictures = 0;
  private cap_lastPicture = -1;
  private cap_encoding = false;
  private cap_seq = 0;
  private cap_inFlight = new Map<number, number>();
  private cap_acks: number[] = [];
  private cap_sent = 0;
  private cap_skipped = 0;
  private cap_lost = 0;
  private cap_oversize = 0;
  private cap_errors = 0;
}

export class CaptureView extends DOMWidgetView {
  render(): void {
    this.el.classList.add('ivisit-camera');
    this.preview = document.createElement('video');
    this.preview.className = 'ivisit-camera-preview';
    this.preview.muted = true;
    this.preview.playsInline = true;
    this.preview.autoplay = true;
    this.preview.style.width = '160px';
    this.preview.style.background = '#000';
    this.line = document.createElement('div');
    this.line.className = 'ivisit-camera-status';
    this.line.style.fontSize = 'var(--jp-ui-font-size0, 11px)';
    this.el.append(this.preview, this.line);
    const model = this.model as unknown as CaptureModel;
    this.listenTo(model, 'ivisit:stream', this.showStream);
    this.listenTo(model, 'ivisit:status', this.showStatus);
    this.showStatus(model.statusText);
    this.showStream(model.stream);
    model.attach();
  }

  private showStream(stream: MediaStream | null): void {
    if (this.preview) {
      this.preview.srcObject = stream;
      if (stream) {
        void this.preview.play().catch(() => undefined);
      }
    }
  }

  private showStatus(text: string): void {
    if (this.line) {
      this.line.textContent = text;
    }
  }

  remove(): void {
    (this.model as unknown as CaptureModel).detach();
    if (this.preview) {
      this.preview.srcObject = null;
    }
    super.remove();
  }

  private preview: HTMLVideoElement | null = null;
  private line: HTMLDivElement | null = null;
}
