/**
 * What the plugin gets from JupyterLab at activation, for the widget models to use.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import type { IDocumentManager } from '@jupyterlab/docmanager';
import { PageConfig } from '@jupyterlab/coreutils';

export interface IContext {
  app: JupyterFrontEnd | null;
  docManager: IDocumentManager | null;
}

export const context: IContext = { app: null, docManager: null };

/** The server's root directory (absolute, maybe starting with ~). */
export function serverRoot(): string {
  return PageConfig.getOption('serverRoot');
}

/** A contents path without its drive prefix ("RTC:a/b.txt" -> "a/b.txt"). */
export function localPath(path: string): string {
  const colon = path.indexOf(':');
  const slash = path.indexOf('/');
  if (colon > 0 && (slash === -1 || colon < slash)) {
    return path.slice(colon + 1);
  }
  return path;
}
