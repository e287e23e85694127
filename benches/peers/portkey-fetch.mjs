// Preloaded into the Portkey gateway by `loadrun proxy --peers` (node --import). Portkey 1.15.2 on
// Node appends headers to the upstream response it passes through; a fetch response's headers
// are immutable in undici, and @hono/node-server's lightweight Response keeps them, so every
// streamed OpenAI request fails with a 500 ("TypeError: immutable"). Re-wrapping each fetch
// response with a copy of its headers makes them mutable and changes nothing else.
const fetch = globalThis.fetch;
globalThis.fetch = async (...args) => {
  const r = await fetch(...args);
  return new Response(r.body, { status: r.status, statusText: r.statusText, headers: new Headers(r.headers) });
};
