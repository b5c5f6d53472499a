/**
 * Drag and drop onto ivisit boxes: what was dropped goes to the kernel.
 *
 * Three kinds are understood:
 * - files from the operating system: their bytes are streamed to the kernel
 *   in chunks, with at most WINDOW chunks not yet acknowledged;
 * - files from JupyterLab's file browser (a Lumino drag carrying
 *   `application/x-jupyter-icontents`): their paths, relative to the server root;
 * - links dragged from a page (`text/uri-list`, or an http(s) `text/plain`).
 *
 * Messages to the kernel, in order:
 *   {event: 'drop-start', drop, files: [{name, size}], paths, urls, root}
 *   {event: 'drop-chunk', drop, file, offset} + one buffer   (repeated)
 *   {event: 'drop-end', drop}
 * The kernel answers each chunk with {event: 'drop-ack', drop}.
 */
import type { WidgetModel } from '@jupyter-widgets/base';
import type { Drag } from '@lumino/dragdrop';
import { localPath, serverRoot } from './context';

const CHUNK = 512 * 1024;
const WINDOW = 4;
const CONTENTS_MIME = 'application/x-jupyter-icontents';
const CONTENTS_MIME_RICH = 'application/x-jupyter-icontentsrich';
const OVER_CLASS = 'ivisit-dragover';

let counter = 0;

/** URLs in a DataTransfer: text/uri-list, else one http(s) URL in text/plain. */
function droppedUrls(data: DataTransfer): string[] {
  const list = data.getData('text/uri-list');
  const lines = (list || '')
    .split(/\r?\n/)
    .map(s => s.trim())
    .filter(s => s && !s.startsWith('#'));
  if (lines.length) {
    return lines;
  }
  const text = (data.getData('text/plain') || '').trim();
  return /^https?:\/\/\S+$/i.test(text) ? [text] : [];
}

/** True if a native drag carries something we can take. */
function nativeAcceptable(data: DataTransfer | null): boolean {
  if (!data) {
    return false;
  }
  const types = Array.from(data.types || []);
  return types.includes('Files') || types.includes('text/uri-list') || types.includes('text/plain');
}

/** Paths of a Lumino drag from the file browser. */
function browserPaths(event: Drag.Event): string[] {
  const paths = event.mimeData.getData(CONTENTS_MIME);
  if (Array.isArray(paths) && paths.length) {
    return paths.map(p => localPath(String(p)));
  }
  const rich = event.mimeData.getData(CONTENTS_MIME_RICH) as any;
  return rich && rich.model && rich.model.path ? [localPath(String(rich.model.path))] : [];
}

/** Streams dropped things to the kernel through one widget model. */
export class DropSender {
  constructor(private model: WidgetModel) {
    this.model.on('msg:custom', this.onMessage, this);
  }

  dispose(): void {
    this.model.off('msg:custom', this.onMessage, this);
  }

  private onMessage(content: any): void {
    if (content && content.event === 'drop-ack') {
      const waiter = this.acks.get(content.drop);
      if (waiter) {
        waiter();
      }
    }
  }

  /** Send files, paths and URLs; resolves when the last byte is acknowledged. */
  async send(files: File[], paths: string[], urls: string[]): Promise<void> {
    const drop = `${Date.now()}-${++counter}`;
    this.model.send(
      {
        event: 'drop-start',
        drop,
        files: files.map(f => ({ name: f.name, size: f.size })),
        paths,
        urls,
        root: serverRoot()
      },
      {}
    );
    let unacked = 0;
    let wake: (() => void) | null = null;
    this.acks.set(drop, () => {
      unacked -= 1;
      if (wake) {
        const w = wake;
        wake = null;
        w();
      }
    });
    try {
      for (let i = 0; i < files.length; i++) {
        const file = files[i];
        for (let offset = 0; offset < file.size; offset += CHUNK) {
          while (unacked >= WINDOW) {
            await new Promise<void>(resolve => (wake = resolve));
          }
          const bytes = await file.slice(offset, offset + CHUNK).arrayBuffer();
          unacked += 1;
          this.model.send({ event: 'drop-chunk', drop, file: i, offset }, {}, [bytes]);
        }
      }
      while (unacked > 0) {
        await new Promise<void>(resolve => (wake = resolve));
      }
    } finally {
      this.acks.delete(drop);
      this.model.send({ event: 'drop-end', drop }, {});
    }
  }

  private acks = new Map<string, () => void>();
}

/** Make `node` a drop target whose drops go to `sender`. Returns a function that undoes it. */
export function makeDropTarget(node: HTMLElement, sender: DropSender): () => void {
  const native = (event: DragEvent): void => {
    if (!nativeAcceptable(event.dataTransfer)) {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
    if (event.type === 'dragleave') {
      node.classList.remove(OVER_CLASS);
      return;
    }
    if (event.type !== 'drop') {
      node.classList.add(OVER_CLASS);
      if (event.dataTransfer) {
        event.dataTransfer.dropEffect = 'copy';
      }
      return;
    }
    node.classList.remove(OVER_CLASS);
    const data = event.dataTransfer!;
    const files = Array.from(data.files || []);
    const urls = files.length ? [] : droppedUrls(data);
    if (files.length || urls.length) {
      void sender.send(files, [], urls);
    }
  };
  const lumino = (event: Event): void => {
    const drag = event as Drag.Event;
    if (!drag.mimeData || !(drag.mimeData.hasData(CONTENTS_MIME) || drag.mimeData.hasData(CONTENTS_MIME_RICH))) {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
    if (event.type === 'lm-dragleave') {
      node.classList.remove(OVER_CLASS);
      return;
    }
    if (event.type !== 'lm-drop') {
      node.classList.add(OVER_CLASS);
      // The file browser's drag supports 'move' only: answer with what it proposes.
      // Nothing is moved; the source does nothing on drop.
      drag.dropAction = drag.proposedAction;
      return;
    }
    node.classList.remove(OVER_CLASS);
    drag.dropAction = drag.proposedAction;
    const paths = browserPaths(drag);
    if (paths.length) {
      void sender.send([], paths, []);
    }
  };
  const nativeTypes = ['dragenter', 'dragover', 'dragleave', 'drop'];
  const luminoTypes = ['lm-dragenter', 'lm-dragover', 'lm-dragleave', 'lm-drop'];
  nativeTypes.forEach(t => node.addEventListener(t, native as EventListener));
  luminoTypes.forEach(t => node.addEventListener(t, lumino));
  return () => {
    nativeTypes.forEach(t => node.removeEventListener(t, native as EventListener));
    luminoTypes.forEach(t => node.removeEventListener(t, lumino));
    node.classList.remove(OVER_CLASS);
  };
}
