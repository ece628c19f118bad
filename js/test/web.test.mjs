/** The web page's static files: its module preload list matches what web/app.js imports. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, posix, relative } from 'node:path';
import { test } from 'node:test';

import { REPO } from './helpers.mjs';

const WEB = join(REPO, 'web');
/** URL prefixes the page uses and the folders fit-web serves them from (fit_serve/static_site.py). */
const SERVED = { '/web/': WEB, '/js/src/': join(REPO, 'js', 'src') };

/** URL of a served repository file. */
function urlOf(file) {
  for (const [prefix, folder] of Object.entries(SERVED)) {
    const rel = relative(folder, file);
    if (!rel.startsWith('..')) return prefix + rel.split('\\').join('/');
  }
  throw new Error(`${file} is not served`);
}

/** Static imports (import/export ... from '...') of a module, as URLs. */
function importsOf(url, source) {
  const specifiers = [...source.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s+'([^']+)'/gms)].map((m) => m[1]);
  return specifiers.map((s) => (s.startsWith('/') ? s : posix.join(posix.dirname(url), s)));
}

test('the page preloads exactly the modules web/app.js imports, transitively', () => {
  const graph = new Set();
  const pending = ['/web/app.js'];
  while (pending.length) {
    const url = pending.pop();
    if (graph.has(url)) continue;
    graph.add(url);
    if (url.startsWith('/ort/')) continue;                       // ONNX Runtime Web's own bundle: one file
    const [prefix, folder] = Object.entries(SERVED).find(([p]) => url.startsWith(p));
    const file = join(folder, url.slice(prefix.length));
    assert.equal(urlOf(file), url);
    pending.push(...importsOf(url, readFileSync(file, 'utf8')));
  }
  const html = readFileSync(join(WEB, 'index.html'), 'utf8');
  const preloaded = [...html.matchAll(/<link rel="modulepreload" href="([^"]+)">/g)].map((m) => m[1]);
  assert.equal(new Set(preloaded).size, preloaded.length, 'a module is preloaded twice');
  assert.deepEqual([...preloaded].sort(), [...graph].sort());
  assert.ok(graph.has('/js/src/pipeline.js') && graph.has('/ort/ort.wasm.min.mjs'));
  assert.ok(!graph.has('/js/src/node.js'), 'the page must not import the Node-only module');
});
