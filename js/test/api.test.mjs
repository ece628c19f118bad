/** The embedding API on its own: loading with the IO the entry point chooses, request checks and their messages. */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import * as ort from 'onnxruntime-node';

import { BackendError, FitPipeline, GenerationError, PackageError } from '../src/index.js';
import { directoryIO, loadPackage } from '../src/node.js';
import { PACKAGE } from './helpers.mjs';

test('a directory loads in Node and generates RGB pixels with parameters', async () => {
  const pipe = await FitPipeline.load(directoryIO(PACKAGE), { ort });
  const image = await pipe.generate({ width: 64, height: 96, label: 'triangle', seed: 2n, steps: 2 });
  assert.equal(image.pixels.length, 64 * 96 * 3);
  assert.equal(image.parameters.class_name, 'triangle');
  assert.equal(image.parameters.backend, 'onnxruntime-node');
  const steps = [];
  await pipe.generate({ width: 64, height: 64, seed: '18446744073709551615', steps: 3, sampler: 'euler',
    onStep: (done, total) => steps.push([done, total]) });
  assert.deepEqual(steps, [[1, 3], [2, 3], [3, 3]]);
  await pipe.release();
});

test('bad requests are GenerationErrors with one-line messages', async () => {
  const pipe = await loadPackage(PACKAGE, { lazyDecoder: true });
  const cases = [
    [{ width: 90, height: 64 }, "90x64 is not on the model's 16-pixel grid; nearest valid sizes: 96x64, 80x64 (or pass --snap)"],
    [{ width: 96.5, height: 64 }, 'width must be a whole number of pixels, got 96.5'],
    [{ width: 96, height: -16 }, 'height must be positive, got -16'],
    [{ width: 96, height: 64, label: 'zebra' }, "unknown class 'zebra' (ids 0..7)"],
    [{ width: 96, height: 64, label: 'star' + 's' }, "unknown class 'stars' (ids 0..7)"],
    [{ width: 96, height: 64, label: 'r' }, "unknown class 'r'; did you mean circle, square, triangle? (ids 0..7)"],
    [{ width: 96, height: 64, seed: -1 }, 'seed must be a whole number from 0 to 2**64 - 1, got -1'],
    [{ width: 96, height: 64, steps: 0 }, 'steps must be a whole number from 1 to 10,000, got 0'],
    [{ width: 96, height: 64, steps: 10001 }, 'steps must be a whole number from 1 to 10,000, got 10001'],
    [{ width: 96, height: 64, cfg: -2.5 }, 'cfg must be a number from 0 to 1000, got -2.5'],
    [{ width: 96, height: 64, cfg: NaN }, 'cfg must be a number from 0 to 1000, got nan'],
    [{ width: 96, height: 64, extrapolation: 'ntk-fancy' }, "unknown extrapolation 'ntk-fancy'; choose one of normal, "
      + 'linear, ntk-aware, ntk-by-parts, yarn, ntk-aware-pro1, ntk-aware-pro2, vision-ntk, vision-yarn'],
    [{ width: 96, height: 64, sampler: 'rk4' }, "unknown sampler 'rk4'; choose one of euler, heun, dopri5, sde"],
  ];
  for (const [request, message] of cases) {
    await assert.rejects(pipe.generate(request), (err) => err instanceof GenerationError && err.message === message);
  }
  assert.deepEqual(pipe.checkSize(90, 70, true), [96, 64]);
  await pipe.release();
});

test('non-finite latents are refused with the Python runtime\'s message', async () => {
  const pipe = await loadPackage(PACKAGE, { lazyDecoder: true });
  const request = pipe.checkRequest({ width: 96, height: 64, label: 'star', seed: 3 });
  const settings = pipe.settings({ steps: 2, cfg: 2.5 });
  const noise = pipe.noise(request);
  noise[0] = NaN;
  await assert.rejects(pipe.sampleLatents([request], settings, null, [noise]),
    (err) => err instanceof GenerationError && err.message === 'sampling seed 3 gave non-finite latents (float32 '
      + 'overflow), so no image is made; lower the guidance scale (cfg 2.5) or check the package with fit-export validate');
  await pipe.release();
});

test('loading without a binding or a package fails with one line', async () => {
  await assert.rejects(FitPipeline.load(directoryIO(PACKAGE), {}), BackendError);
  await assert.rejects(loadPackage('/no/such/package'),
    (err) => err instanceof PackageError && err.message === 'package /no/such/package does not exist or is not a directory');
  // The core never reads directories itself: without a PackageIO the source is a URL, and a path is not one.
  await assert.rejects(FitPipeline.load('/no/such/package', { ort }),
    (err) => err instanceof PackageError && !err.message.includes('\n')
      && /^package \/no\/such\/package: cannot read manifest.json \(/.test(err.message));
});

test('a manifest naming a file it does not list is refused at load with Python\'s message', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fit-js-variant-'));
  const doc = JSON.parse(readFileSync(join(PACKAGE, 'manifest.json'), 'utf8'));
  doc.transformer.variants.push({ name: 'extra', file: 'transformer.extra.onnx', precision: 'fp32' });
  doc.transformer.default_variant = 'extra';
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(doc));
  await assert.rejects(loadPackage(dir), (err) => err instanceof PackageError
    && err.message === `${join(dir, 'manifest.json')}: transformer.extra.onnx is referenced but not listed under files`);
});

test('examples/embed_node.mjs serves PNGs and answers bad requests with 400', async () => {
  const { serve } = await import('../../examples/embed_node.mjs');
  const pipe = await loadPackage(PACKAGE);
  const server = await serve(pipe, 0);
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    const ok = await fetch(`${base}/generate?width=96&height=64&label=star&seed=3&steps=2`);
    assert.equal(ok.status, 200);
    const png = new Uint8Array(await ok.arrayBuffer());
    assert.deepEqual([...png.subarray(1, 4)], [80, 78, 71]);
    assert.ok(Buffer.from(png).includes('fit:class_name\0star'));
    const bad = await fetch(`${base}/generate?width=90&height=64`);
    assert.equal(bad.status, 400);
    assert.match(await bad.text(), /^90x64 is not on the model's 16-pixel grid/);
    assert.equal((await fetch(`${base}/other`)).status, 404);
  } finally {
    server.close();
    await pipe.release();
  }
});
