// Types of the watchgw browser client: watch-client.js (classic script, global WatchClient) and
// watch-client.mjs (ES module; its own name's declarations, watch-client.d.mts, re-export these).
// The events are those of docs/PROTOCOL.md section 4, as a listener receives them.

/** The fields that name a channel (PROTOCOL.md section 2). */
export interface ChannelFields {
  /** `api/v1/<plural>` or `apis/<group>/<version>/<plural>`. */
  resourceType: string;
  orgId?: string;
  projectId?: string;
  namespace?: string;
  /** One object: `fieldSelector=metadata.name=<name>` upstream. */
  name?: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** Watched in the caller's own user control plane. */
  userScoped?: boolean;
}

/** A Kubernetes object as the control plane sent it. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    resourceVersion?: string;
    uid?: string;
    labels?: Record<string, string>;
    [field: string]: unknown;
  };
  [field: string]: unknown;
}

/** A channel's objects by `namespace/name` (`name` for cluster-scoped objects). */
export type Objects<T extends KubeObject = KubeObject> = ReadonlyMap<string, T>;

/** A change after the list is complete: the list already has it applied. */
export interface WatchEvent<T extends KubeObject = KubeObject> {
  channel: string;
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: T;
  /** A position the client can resume from (PROTOCOL.md section 4). */
  resourceVersion: string;
}

/** The list is complete: after the first snapshot, after a `resync`, or when a watch joins a
 * channel that is complete already (then without `resourceVersion`). */
export interface SyncedEvent {
  channel: string;
  resourceVersion?: string;
}

/** The channel's upstream has been failing for `watch_error_after_s`; the gateway keeps trying
 * and the list catches up once it is back. */
export interface WatchErrorEvent {
  channel: string;
  code: number;
  reason: string;
  message: string;
}

/** The gateway ended the subscription: `forbidden` (access revoked) or `gone` (the resource type
 * is no longer served). */
export interface UnsubscribedEvent {
  channel: string;
  reason: "forbidden" | "gone" | (string & {});
}

/** The subscribe was refused (e.g. 403 forbidden, 400 for a bad field): nothing more comes. */
export interface SubscribeErrorEvent {
  channel: string;
  message: string;
}

/** What a listener receives, by kind: `change` after every change once the list is complete.
 * (A union of tuples, so that testing `kind` tells TypeScript which event it is.) */
export type ListenerArgs<T extends KubeObject = KubeObject> =
  | [objects: Objects<T>, event: WatchEvent<T> | SyncedEvent, kind: "change"]
  | [objects: Objects<T>, event: WatchErrorEvent, kind: "watch-error"]
  | [objects: Objects<T>, event: UnsubscribedEvent, kind: "unsubscribed"]
  | [objects: Objects<T>, event: SubscribeErrorEvent, kind: "error"];

export type Listener<T extends KubeObject = KubeObject> = (...args: ListenerArgs<T>) => void;

/** Any event a listener receives. */
export type ListenerEvent<T extends KubeObject = KubeObject> = ListenerArgs<T>[1];

/** The stream: `connecting` before its first `connected`, `reconnecting` while it is down or
 * starting over (the client gets it back by itself), `closed` after `close()`. */
export type StreamState = "connecting" | "connected" | "reconnecting" | "closed";

/** A channel: `reconnecting` while the stream is down or its subscribe waits to be sent again,
 * `resyncing` until its snapshot (the first one, or a fresh one) is complete, `connected` after. */
export type ChannelState = "connected" | "reconnecting" | "resyncing";

export interface ChannelStatus {
  state: ChannelState;
  /** `Date.now()` when this page last got an event of the channel; null before its snapshot. */
  lastEventAt: number | null;
}

export interface Status {
  state: StreamState;
  /** The last `connected` resumed the session (no subscribe needed). */
  resumed: boolean;
  /** The gateway replica serving the stream, from `connected`. */
  replica: string | null;
  /** The stream's `cid`; null until the shared worker has answered. */
  clientId: string | null;
  /** This page's watches go through the stream the origin's tabs share (SharedWorker). */
  shared: boolean;
  /** The latest `lastEventAt` of this page's channels. */
  lastEventAt: number | null;
  /** This page's channels by key (see `WatchClient.channelKey`). */
  channels: Record<string, ChannelStatus>;
}

export interface WatchClientOptions {
  /** Origin of the gateway; default: the page's. */
  baseUrl?: string;
  /** Default `/api/watch`. */
  basePath?: string;
  /** The stream's `cid`; default a random UUID (one per worker, or per page without one). */
  clientId?: string;
  /** 7 for a gateway with `server.key_segments = 7`; default 8. */
  keySegments?: 7 | 8;
  onstatus?: (status: Status) => void;
  /** false: this page's own stream, no SharedWorker. Default true where SharedWorker exists. */
  shared?: boolean;
  /** The URL of watch-client.js for the SharedWorker; default: where this script came from. */
  workerUrl?: string | URL;
}

export interface WaitForOptions {
  /** Milliseconds (default 5000, `Infinity`: none); then the promise rejects with a
   * `TimeoutError` DOMException. */
  timeout?: number;
  /** Aborting rejects the promise with the signal's reason. */
  signal?: AbortSignal;
}

/** Why `waitFor` gave up on a channel that failed for good. */
export interface ChannelFailure extends Error {
  /** `error` (subscribe refused) or the `unsubscribed` reason. */
  code: string;
}

declare class WatchClientClass {
  constructor(options?: WatchClientOptions);

  /** Where the SharedWorker's script is, for clients made without `workerUrl`. */
  static workerUrl: string | null;
  /** The channel key the gateway forms for these fields (PROTOCOL.md section 2). */
  static channelKey(fields: ChannelFields, segments?: 7 | 8): string;
  /** The key of an object in `Objects`. */
  static objectKey(object: KubeObject): string;

  readonly keySegments: 7 | 8;
  readonly connected: boolean;
  readonly replica: string | null;
  readonly clientId: string | null;
  /** See `Status.shared`; it turns false when the worker cannot start. */
  readonly shared: boolean;
  /** A fresh copy of the status on every read. */
  readonly status: Status;
  /** Watches registered now: every `watch` not yet undone, every `waitFor` not yet settled. */
  readonly listenerCount: number;
  /** Runs when the stream's state or a channel's state changes. */
  onstatus: (status: Status) => void;

  /** Watch a channel; returns the function that stops watching (the channel is unsubscribed
   * when no page of the origin watches it any more). */
  watch<T extends KubeObject = KubeObject>(fields: ChannelFields, listener: Listener<T>): () => void;
  /** The same, for a listener that takes fewer arguments (TypeScript matches a union of argument
   * lists only against a listener that declares all three). */
  watch<T extends KubeObject = KubeObject>(
    fields: ChannelFields,
    listener: (objects: Objects<T>, event: ListenerEvent<T>) => void,
  ): () => void;

  /** Resolves with a copy of the channel's objects once `predicate` holds; rejects on timeout,
   * abort, or a channel that fails for good (`ChannelFailure`). Leaves nothing registered. */
  waitFor<T extends KubeObject = KubeObject>(
    fields: ChannelFields,
    predicate: (objects: Objects<T>, event: WatchEvent<T> | SyncedEvent) => boolean,
    options?: WaitForOptions,
  ): Promise<Map<string, T>>;

  /** Stop: this page's watches are released; a page's own stream is closed. */
  close(): void;
}

export { WatchClientClass as WatchClient };

declare global {
  /** The classic script's global. */
  var WatchClient: typeof WatchClientClass;
  type WatchClient = WatchClientClass;
}
