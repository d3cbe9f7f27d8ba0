// Types of watch-client.mjs: those of watch-client.d.ts (TypeScript looks for declarations
// under the module's own name).
export * from "./watch-client.js";
