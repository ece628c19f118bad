/**
 * The embedding API on its own: loading with the IO the entry point chooses, the one request check (prepare), its
 * jobs and messages, taps on the transformer calls.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import * as ort from 'onnxruntime-node';

import { BackendError, FitPipeline, GenerationError, Job, Limits, PackageError, Request } from '../src/index.js';
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
    [{ width: 90, height: 64 }, "90x64 is not on the model's 16-pixel grid; nearest valid sizes: 96x64, 80x64"],
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
    [{ width: 96, height: 64, sampler: 'rk4' }, "unknown sampler 'rk4'; choose one of euler, heun, dopri5, sde, ab2, "
      + 'unipc'],
  ];
  for (const [request, message] of cases) {
    await assert.rejects(pipe.generate(request), (err) => err instanceof GenerationError && err.message === message);
  }
  assert.deepEqual(pipe.checkSize(90, 70, true), [96, 64]);
  await pipe.release();
});

test('prepare checks a request once into its jobs: classes cycled, seeds consecutive, made on access', async () => {
  const pipe = await loadPackage(PACKAGE, { lazyDecoder: true });
  const jobs = pipe.prepare({ width: 96, height: 64, label: 'star,1', seed: 7, num: 5, steps: 3 });
  assert.equal(jobs.length, 5);
  assert.deepEqual([...jobs].map((j) => j.request), [[7, 7n], [1, 8n], [7, 9n], [1, 10n], [7, 11n]]
    .map(([label, seed]) => new Request(96, 64, label, seed)));
  assert.ok([...jobs].every((j) => j.settings === jobs.settings && j.settings.sampler.steps === 3));
  assert.deepEqual(jobs.at(-1), jobs.at(4));
  assert.deepEqual(jobs.slice(1, 3), [jobs.at(1), jobs.at(2)]);
  assert.throws(() => jobs.at(5), RangeError);
  assert.deepEqual([...pipe.prepare({ width: 96, height: 64, label: [null, 'circle'], num: 3 })]
    .map((j) => j.request.label), [null, 0, null]);
  assert.deepEqual(pipe.prepare().at(0), new Job(new Request(...pipe.defaultSize, null, 0n), pipe.settings()));
  const many = pipe.prepare({ width: 32, height: 32, num: 10 ** 12 });
  assert.equal(many.at(10 ** 12 - 1).request.seed, BigInt(10 ** 12 - 1));
  await pipe.release();
});

test('prepare names the parameter at fault, the others it mentions and the option that fixes it', async () => {
  const pipe = await loadPackage(PACKAGE, { lazyDecoder: true });
  const cases = [
    [{ num: 0 }, 'num', 'num must be a whole number of at least 1, got 0'],
    [{ num: { float: 2 } }, 'num', 'num must be a whole number of at least 1, got 2.0'],
    [{ width: '96' }, 'width', "width must be a whole number of pixels, got '96'"],
    [{ seed: 2n ** 64n - 1n, num: 2 }, 'seed', 'seed 18446744073709551615 with num 2 needs seeds up to '
      + '18446744073709551616; seeds must be below 2**64'],
    [{ seed: { float: 1.5 } }, 'seed', 'seed must be a whole number from 0 to 2**64 - 1, got 1.5'],
    [{ steps: { float: 2 } }, 'steps', 'steps must be a whole number from 1 to 10,000, got 2.0'],
    [{ sampler: 3 }, 'sampler', 'unknown sampler 3; choose one of euler, heun, dopri5, sde, ab2, unipc'],
    [{ timeShift: 0 }, 'time_shift', 'time_shift must be a number from 0.01 to 100, got 0'],
    [{ timeShift: { float: -1 } }, 'time_shift', 'time_shift must be a number from 0.01 to 100, got -1.0'],
    [{ timeShift: Infinity }, 'time_shift', 'time_shift must be a number from 0.01 to 100, got inf'],
    [{ timeShift: '2' }, 'time_shift', "time_shift must be a number from 0.01 to 100, got '2'"],
    [{ timeShift: true }, 'time_shift', 'time_shift must be a number from 0.01 to 100, got True'],
    [{ timeShift: 2, sampler: 'dopri5' }, 'time_shift', 'time_shift applies to euler, heun, ab2, unipc, not dopri5, '
      + 'which keeps its own schedule'],
    [{ tailCompression: 1.5 }, 'tail_compression', 'tail_compression must be a number from 0 to 1, got 1.5'],
    [{ tailCompression: NaN }, 'tail_compression', 'tail_compression must be a number from 0 to 1, got nan'],
    [{ tailCompression: '1' }, 'tail_compression', "tail_compression must be a number from 0 to 1, got '1'"],
    [{ tailCompression: { float: 2 } }, 'tail_compression', 'tail_compression must be a number from 0 to 1, got 2.0'],
    [{ tailCompression: 0.5, sampler: 'sde' }, 'tail_compression', 'tail_compression applies to euler, heun, ab2, '
      + 'unipc, not sde, which keeps its own schedule'],
    [{ tailCompression: 2, timeShift: 2, sampler: 'sde' }, 'tail_compression', 'tail_compression must be a number '
      + 'from 0 to 1, got 2'],                           // both ranges are checked before either sampler rule
    [{ extrapolation: 5 }, 'extrapolation', 'unknown extrapolation 5; choose one of normal, linear, ntk-aware, '
      + 'ntk-by-parts, yarn, ntk-aware-pro1, ntk-aware-pro2, vision-ntk, vision-yarn'],
    [{ label: 'star,bogus' }, null, "unknown class 'bogus' (ids 0..7)"],
    [{ steps: 1001, limits: new Limits(1000, 20) }, 'steps', 'steps must be a whole number from 1 to 1,000, got 1001'],
    [{ cfg: 21, limits: new Limits(1000, 20.5) }, 'cfg', 'cfg must be a number from 0 to 20.5, got 21'],
    [{ width: 80, height: 80, label: 'star', steps: 17, limits: new Limits(1000, 1000, 800) }, null,
      'this request costs 850 (17 network evaluations x 25 tokens x 2 (guidance)), more than the limit of 800; ask for '
      + 'fewer steps, a smaller size or another sampler'],
    [{ width: 80, height: 80, sampler: 'dopri5', limits: new Limits(1000, 1000, 1500049) }, null,
      'this request costs 1,500,050 (60,002 network evaluations at most (dopri5) x 25 tokens), more than the limit of '
      + '1,500,049; ask for fewer steps, a smaller size or another sampler'],
  ];
  for (const [request, parameter, message] of cases) {
    assert.throws(() => pipe.prepare({ width: 32, height: 32, ...request }),
      (err) => err instanceof GenerationError && err.message === message && err.parameter === parameter, message);
  }
  assert.throws(() => pipe.prepare({ width: 32, height: 32, seed: 2n ** 64n - 1n, num: 2 }),
    (err) => err.hint === null && err.mentions.join() === 'num');
  assert.throws(() => pipe.prepare({ width: 90, height: 64 }), (err) => err.hint === 'snap' && err.parameter === null);
  assert.equal(pipe.prepare({ width: 90, height: 64, snap: true }).at(0).request.width, 96);
  assert.throws(() => new Limits(10001), /^RangeError: max_steps must be a whole number from 1 to 10,000, got 10001$/);
  assert.throws(() => new Limits(1000, 1000, 0), /^RangeError: max_cost must be a whole number of at least 1 or null/);
  assert.equal(pipe.prepare({ width: 80, height: 80, label: 'star', limits: new Limits(1000, 1000, 800) }).length, 1);
  assert.equal(pipe.prepare({ width: 80, height: 80, sampler: 'dopri5', limits: new Limits(1000, 1000, 1500050) })
    .length, 1);
  await pipe.release();
});

test('the time shift: the package\'s for the fixed-grid samplers, 1 for the others, part of the loop key', async () => {
  // the default model's manifest with sampler.time_shift 3
  const io = directoryIO(PACKAGE);
  const doc = JSON.parse(await io.readManifest());
  doc.sampler.time_shift = 3;
  const pipe = await FitPipeline.load({ ...io, readManifest: async () => JSON.stringify(doc) },
    { ort, lazyDecoder: true });
  const shift = (request) => pipe.settings(request).sampler.timeShift;
  assert.deepEqual(['euler', 'heun', 'ab2', 'unipc', 'dopri5', 'sde'].map((sampler) => shift({ sampler })),
    [3, 3, 3, 3, 1, 1]);
  assert.equal(shift({ sampler: 'unipc', timeShift: { float: 2.5 } }), 2.5);
  assert.equal(shift({ sampler: 'sde', timeShift: 1 }), 1);
  const key = (timeShift) => pipe.settings({ sampler: 'ab2', timeShift }).loopKey();
  assert.notEqual(key(2), key(3));
  await assert.rejects(pipe.sampleLatents([pipe.prepare({ width: 32, height: 32, sampler: 'ab2', timeShift: 2 }).at(0),
    pipe.prepare({ width: 32, height: 32, sampler: 'ab2' }).at(0)]), /^GenerationError: jobs sampled together need/);
  const [image] = await pipe.generateMany(pipe.prepare({ width: 32, height: 32, sampler: 'unipc', steps: 2 }));
  assert.deepEqual(image.parameters.time_shift, { float: 3 });
  await pipe.release();
});

test('the tail compression: the package\'s for the fixed-grid samplers, 0 for the others, part of the loop key, in '
  + 'the parameters only when not 0', async () => {
  const io = directoryIO(PACKAGE);
  const doc = JSON.parse(await io.readManifest());
  doc.sampler.tail_compression = 0.5;
  const pipe = await FitPipeline.load({ ...io, readManifest: async () => JSON.stringify(doc) },
    { ort, lazyDecoder: true });
  const tail = (request) => pipe.settings(request).sampler.tailCompression;
  assert.deepEqual(['euler', 'heun', 'ab2', 'unipc', 'dopri5', 'sde'].map((sampler) => tail({ sampler })),
    [0.5, 0.5, 0.5, 0.5, 0, 0]);
  assert.equal(tail({ sampler: 'ab2', tailCompression: { float: 1 } }), 1);
  assert.equal(tail({ sampler: 'dopri5', tailCompression: 0 }), 0);
  const key = (tailCompression) => pipe.settings({ sampler: 'ab2', tailCompression }).loopKey();
  assert.notEqual(key(0), key(1));
  const parameters = async (request) => (await pipe.generateMany(pipe.prepare({ width: 32, height: 32, steps: 2,
    ...request })))[0].parameters;
  assert.deepEqual((await parameters({ sampler: 'ab2' })).tail_compression, { float: 0.5 });
  assert.equal('tail_compression' in await parameters({ sampler: 'ab2', tailCompression: 0 }), false);
  assert.equal('tail_compression' in await parameters({ sampler: 'sde' }), false);
  await pipe.release();
});

test('tap sees every transformer call of sampling while it lasts', async () => {
  const pipe = await loadPackage(PACKAGE, { lazyDecoder: true });
  const jobs = pipe.prepare({ width: 96, height: 64, label: 'star', steps: 3, sampler: 'heun', cfg: 2 });
  const calls = [];
  const images = await pipe.tap(async (feed, outputs) => {
    calls.push([feed.x.dims, feed.y.data.length, outputs.v.length]);
  }, () => pipe.generateMany(jobs));
  assert.equal(images.length, 1);
  assert.deepEqual(calls, Array(6).fill([[2, 24, 16], 2, 2 * 24 * 16]));       // heun: 2 calls a step; guided: 2 rows
  await pipe.generateMany(jobs);
  assert.equal(calls.length, 6);
  await assert.rejects(pipe.tap(() => { throw new Error('stop'); }, () => pipe.generateMany(jobs)), /stop/);
  await pipe.generateMany(jobs);
  await pipe.release();
});

test('a feed that does not follow the graph is one BackendError line, as in Python', async () => {
  const pipe = await loadPackage(PACKAGE);
  const z = { dtype: 'float32', data: new Float32Array(4), dims: [1, 4, 1, 1] };
  await assert.rejects(pipe.vae.infer({ z }), (err) => err instanceof BackendError
    && err.message === "onnxruntime feed does not match the graph: missing ['latent'], unexpected ['z']");
  await pipe.release();
});

test('non-finite latents are refused with the Python runtime\'s message', async () => {
  const pipe = await loadPackage(PACKAGE, { lazyDecoder: true });
  const jobs = pipe.prepare({ width: 96, height: 64, label: 'star', seed: 3, steps: 2, cfg: 2.5 });
  const noise = pipe.noise(jobs.at(0).request);
  noise[0] = NaN;
  await assert.rejects(pipe.sampleLatents(jobs, null, [noise]),
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
    const ok = await fetch(`${base}/generate?width=96&height=64&label=star&seed=3&steps=2&time_shift=3`
      + '&tail_compression=1');
    assert.equal(ok.status, 200);
    const png = new Uint8Array(await ok.arrayBuffer());
    assert.deepEqual([...png.subarray(1, 4)], [80, 78, 71]);
    assert.ok(Buffer.from(png).includes('fit:class_name\0star'));
    assert.ok(Buffer.from(png).includes('fit:time_shift\x003.0'));
    assert.ok(Buffer.from(png).includes('fit:tail_compression\x001.0'));
    const bad = await fetch(`${base}/generate?width=90&height=64`);
    assert.equal(bad.status, 400);
    assert.equal(await bad.text(), "90x64 is not on the model's 16-pixel grid; nearest valid sizes: 96x64, 80x64\n");
    const text = await fetch(`${base}/generate?width=abc&height=64`);
    assert.equal(text.status, 400);
    assert.equal(await text.text(), "width must be a whole number of pixels, got 'abc'\n");
    assert.equal((await fetch(`${base}/other`)).status, 404);
  } finally {
    server.close();
    await pipe.release();
  }
});
