// A small typed console page on the browser client, as a TypeScript user writes it. It is only
// type-checked, never run: tests/typescript/test_types.py runs tsc (strict) on it, so that
// watchgw/static/watch-client.d.ts covers the whole API. The @ts-expect-error lines prove the
// types are precise (tsc fails when such a line is NOT an error).
import {
  type ChannelFailure,
  type ChannelFields,
  type ChannelState,
  type KubeObject,
  type Listener,
  type Status,
  type StreamState,
  WatchClient,
} from "../../watchgw/static/watch-client.mjs";

interface Zone extends KubeObject {
  spec: { domainName: string };
  status?: { conditions?: { type: string; status: string }[] };
}

const zones: ChannelFields = {
  resourceType: "apis/dns.networking.miloapis.com/v1alpha1/dnszones",
  projectId: "proj-abc",
  namespace: "default",
};

function show(status: Status): void {
  const stream: StreamState = status.state;
  const resumed = status.resumed ? " (resumed)" : "";
  const header = `${stream}${resumed} ${status.replica ?? ""} ${status.clientId ?? ""}`;
  const where = status.shared ? "one stream for all tabs" : "this tab's own stream";
  const last: number | null = status.lastEventAt;
  console.log(header, where, last === null ? "no event yet" : new Date(last).toISOString());
  for (const [key, channel] of Object.entries(status.channels)) {
    const state: ChannelState = channel.state;
    console.log(key, state, channel.lastEventAt);
  }
}

const wc = new WatchClient({ basePath: "/api/watch", keySegments: 8, shared: true, onstatus: show });
wc.onstatus = show;
show(wc.status);
const ready: boolean = wc.connected && wc.shared && wc.listenerCount >= 0;
const served: string | null = wc.replica;
console.log(ready, served, wc.clientId, wc.keySegments, WatchClient.channelKey(zones, 7));

const render: Listener<Zone> = (objects, event, kind) => {
  if (kind === "change") {
    const names: string[] = [...objects.values()].map((zone) => zone.spec.domainName);
    if ("type" in event) {
      const changed: Zone = event.object;
      console.log(event.type, WatchClient.objectKey(changed), event.resourceVersion, names);
    } else {
      console.log("complete at", event.resourceVersion ?? "(joined)", names);
    }
    // @ts-expect-error: a listener gets the objects to read, not to change
    objects.set("x", objects.values().next().value);
  } else if (kind === "watch-error") {
    const code: number = event.code;
    console.log(code, event.reason, event.message);
    // @ts-expect-error: a watch-error carries no object
    console.log(event.object);
  } else if (kind === "unsubscribed") {
    console.log(event.channel, event.reason === "forbidden" || event.reason === "gone");
  } else {
    const message: string = event.message;
    console.log(message);
  }
};
const stop: () => void = wc.watch<Zone>(zones, render);
stop();
// Inline listeners, with all three arguments (narrowed by kind) or fewer.
wc.watch(zones, (objects, event, kind) => {
  if (kind === "watch-error") console.log(objects.size, event.message);
})();
wc.watch<Zone>(zones, (objects) => console.log(objects.get("default/a")?.spec.domainName))();

// @ts-expect-error: resourceType names the channel and is required
wc.watch({ projectId: "proj-abc" }, () => {});
// @ts-expect-error: the status is read, not written
wc.status = show;
// @ts-expect-error: there are 7 or 8 key segments
new WatchClient({ keySegments: 9 });

async function firstReadyZone(signal: AbortSignal): Promise<Zone | undefined> {
  try {
    const found: Map<string, Zone> = await wc.waitFor<Zone>(
      zones,
      (objects, event) =>
        ("type" in event ? event.type !== "DELETED" : true) &&
        [...objects.values()].some((z) => z.status?.conditions?.some((c) => c.type === "Ready")),
      { timeout: 10_000, signal },
    );
    return found.values().next().value;
  } catch (err) {
    if (err instanceof DOMException && err.name === "TimeoutError") return undefined;
    const failure = err as ChannelFailure;
    console.log(failure.code, failure.message);
    throw err;
  }
}
const abort = new AbortController();
void firstReadyZone(abort.signal).then((zone) => console.log(zone?.spec.domainName));
abort.abort();

// The classic script's global is the module's class.
WatchClient.workerUrl = new URL("/static/watch-client.js", location.href).href;
const own: WatchClient = new globalThis.WatchClient({
  baseUrl: "https://console.example",
  clientId: "console-tab-0001",
  shared: false,
  workerUrl: new URL("/static/watch-client.js", location.href),
});
const Same: typeof WatchClient = globalThis.WatchClient;
own.close();
new Same().close();
wc.close();
