#!/usr/bin/env node
/**
 * A minimal Node app embedding the FiT runtime (js/): an HTTP server that returns generated PNGs, the Node twin of
 * examples/embed_app.py.
 *
 *   npm ci --prefix js
 *   node examples/embed_node.mjs [PACKAGE] [--port 8000]
 *   curl -o star.png "http://localhost:8000/generate?width=96&height=64&label=star&seed=3&steps=16"
 *
 * The pipeline is loaded once; requests run one at a time (one ONNX Runtime session already uses every core).
 * Bad requests get HTTP 400 with the runtime's one-line message.
 */
import { createServer } from 'node:http';
import { deflateSync } from 'node:zlib';

import { GenerationError, pngBytes } from '../js/src/index.js';
import { loadPackage } from '../js/src/node.js';
import { pyNumber, pyRepr } from '../js/src/params.js';

const INTEGER_FIELDS = ['width', 'height', 'seed', 'steps'];

/**
 * URL query -> prepare() arguments, handed on as given: text that reads as a number as that number (label stays
 * text: an id or a class name); prepare checks them all and words every mistake.
 */
export function parseQuery(params) {
  const args = {};
  for (const [key, value] of params) {
    if (INTEGER_FIELDS.includes(key)) args[key] = pyNumber(value, 'int');
    else if (key === 'cfg') args.cfg = pyNumber(value);
    else if (key === 'time_shift') args.timeShift = pyNumber(value);
    else if (key === 'tail_compression') args.tailCompression = pyNumber(value);
    else if (['label', 'sampler', 'extrapolation'].includes(key)) args[key] = value;
    else throw new GenerationError(`unknown parameter ${pyRepr(key)}`);
  }
  return args;
}

/** Start serving; resolves to the http.Server. */
export async function serve(pipe, port, host = '127.0.0.1') {
  let queue = Promise.resolve();
  const server = createServer((request, response) => {
    const url = new URL(request.url, 'http://localhost');
    if (url.pathname !== '/generate') {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end('try /generate?width=96&height=64\n');
      return;
    }
    queue = queue.then(async () => {
      try {
        const [image] = await pipe.generateMany(pipe.prepare(parseQuery(url.searchParams)));
        const png = await pngBytes(image.pixels, image.width, image.height, image.parameters, (d) => deflateSync(d));
        response.writeHead(200, { 'Content-Type': 'image/png' }).end(png);
      } catch (err) {
        const status = err instanceof GenerationError ? 400 : 500;
        response.writeHead(status, { 'Content-Type': 'text/plain' }).end(`${err.message}\n`);
      }
    });
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  return server;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const portAt = args.indexOf('--port');
  const port = portAt >= 0 ? Number(args.splice(portAt, 2)[1]) : 8000;
  const pipe = await loadPackage(args[0]);
  const server = await serve(pipe, port);
  console.log(`serving ${pipe.name} on http://127.0.0.1:${server.address().port}/generate`);
}
