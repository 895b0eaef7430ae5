'use strict';
// Waiting on a condition with a deadline (never a fixed sleep).

/** Resolves once `probe()` (sync or async) is truthy; rejects after `timeoutMs`. */
async function waitFor(what, probe, timeoutMs = 15_000, intervalMs = 20) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // eslint-disable-next-line no-await-in-loop
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    // eslint-disable-next-line no-await-in-loop
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

module.exports = { waitFor };
