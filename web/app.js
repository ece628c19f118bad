/**
 * The FiT web page: the js/ core on onnxruntime-web. The page is served by `fit-web` (or any static host that sends
 * the headers in docs/javascript.md); query parameters: ?package=URL (default /package/), ?ep=webgpu|wasm (where the
 * graphs run; default WebGPU when the browser offers an adapter, else WASM), ?threads=N (WASM threads),
 * ?precision=NAME (a transformer variant or precision, as fit-run --precision; default: the package's default
 * variant, its fp16 variant on a WebGPU adapter with shader-f16; an fp16 variant asked for on an adapter without
 * shader-f16 runs on WASM, and the status line says why), ?optimization=disabled|basic|extended|all (ONNX
 * Runtime graph optimization, default disabled: the first image comes 0.2-0.4 s sooner on a 2-core CPU, with the
 * default model's pixels and warm speed unchanged, as its transformer variant is fused at export; `all` may run a
 * package without such a variant faster once loaded), ?bench=N (after each image, N more of the same request, and
 * their per-step and decoding times in the status line).
 *
 * WebGPU runs on onnxruntime-web's WebGPU build (/ort/ort.webgpu.min.mjs, imported only when an adapter exists);
 * WASM on its WASM build. When WebGPU cannot be used (no adapter, a session it cannot create, the device lost, a
 * failed run) the page runs on WASM and the status line says why.
 */
import * as ortWasm from '/ort/ort.wasm.min.mjs';
import { FitPipeline, GenerationError, SAMPLERS, fetchIO, loadManifest, pngBytes, select } from '/js/src/index.js';
import { pyNumber, pyRepr } from '/js/src/params.js';

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const packageUrl = query.get('package') ?? '/package/';
const status = (text, error = false) => { $('status').textContent = text; $('status').className = error ? 'error' : ''; };
const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;
const milliseconds = (ms) => `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;

/** Where the graphs can run, in the order the page tries them. */
const EXECUTION_PROVIDERS = ['webgpu', 'wasm'];
const EP_LABELS = { webgpu: 'WebGPU', wasm: 'WASM' };

// Threads need cross-origin isolation: then one per core, at most 4 (on 2 cores, 2 threads gave a warm image 1.5x
// sooner than 1; see docs/javascript.md, Speed).
const threadsByDefault = globalThis.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
const threads = Number(query.get('threads') ?? threadsByDefault);

let pipe = null;
/** Where `pipe` runs: {ep, ort, adapter, device, lost (the device's loss, once it happened), fallback (why not WebGPU),
 * decoderEp, decoderFallback}. */
let running = null;
let decoderReady = Promise.resolve();
let last = null;
let busy = false;

function options(select, values, chosen) {
  select.replaceChildren(...values.map(([value, text]) => new Option(text, value, false, value === chosen)));
}

function fillControls() {
  $('model-name').textContent = pipe.name;
  options($('class'), [['', 'unconditional'], ...pipe.classNames.map((name, i) => [String(i), `${i}: ${name}`])], '');
  if (pipe.classNames.length) $('class').value = '0';
  const g = pipe.granularity;
  const sides = [];
  for (let side = g; side <= pipe.maxTokens * g && sides.length < 64; side += g) sides.push([String(side), String(side)]);
  options($('width'), sides, String(pipe.defaultSize[0]));
  options($('height'), sides, String(pipe.defaultSize[1]));
  const defaults = pipe.samplerSettings();
  $('steps').value = defaults.steps;
  options($('sampler'), SAMPLERS.map((s) => [s, s]), defaults.method);
  $('cfg').value = pipe.manifest.guidance.default_scale;
  options($('extrapolation'), [['', 'package default'], ...pipe.extrapolations.map((e) => [e, e])], '');
}

function readRequest() {
  const number = (id) => ($(id).value.trim() === '' ? NaN : Number($(id).value));
  const shift = $('time-shift').value;
  const tail = $('tail-compression').value;
  return {
    width: number('width'), height: number('height'), label: $('class').value === '' ? null : Number($('class').value),
    seed: $('seed').value.trim(), steps: number('steps'), sampler: $('sampler').value, cfg: number('cfg'),
    extrapolation: $('extrapolation').value || null,
    // empty: the package's; text that reads as a number is that number, other text goes to the engine's check as is
    timeShift: shift.trim() === '' ? null : pyNumber(shift),
    tailCompression: tail.trim() === '' ? null : pyNumber(tail),
  };
}

function show(image) {
  const canvas = $('image');
  canvas.width = image.width;
  canvas.height = image.height;
  const rgba = new Uint8ClampedArray(image.width * image.height * 4);
  for (let i = 0, j = 0; i < image.pixels.length; i += 3, j += 4) {
    rgba[j] = image.pixels[i];
    rgba[j + 1] = image.pixels[i + 1];
    rgba[j + 2] = image.pixels[i + 2];
    rgba[j + 3] = 255;
  }
  canvas.getContext('2d').putImageData(new ImageData(rgba, image.width, image.height), 0, 0);
}

// -- where the graphs run ---------------------------------------------------------------------------------------

/** Why a WebGPU failure happened, as the status line says it: the device lost, memory, an operator, or ORT's line.
 * A run on a lost device may fail before the loss is reported: the report is awaited for up to 200 ms. */
async function gpuFailure(err) {
  const device = running?.ep === 'webgpu' ? running.device : null;
  if (device) await Promise.race([device.lost, new Promise((resolve) => { setTimeout(resolve, 200); })]);
  if (device && running.lost) return `the WebGPU device was lost (${running.lost})`;
  const text = String(err?.message ?? err);
  if (/out of memory|OutOfMemory|OOM\b/i.test(text)) return `out of GPU memory (${text})`;
  if (/NOT_IMPLEMENTED|not implemented|Could not find an implementation|unsupported op/i.test(text)) {
    return `an operator is missing on WebGPU (${text})`;
  }
  return `WebGPU failed (${text})`;
}

/** A GPU adapter, or why there is none. */
async function findAdapter() {
  if (!navigator.gpu) return { reason: 'this browser has no WebGPU' };
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? { adapter } : { reason: 'no WebGPU adapter' };
  } catch (err) {
    return { reason: `no WebGPU adapter (${err.message})` };
  }
}

/** The adapter's vendor and architecture, for the status line. */
function adapterName(adapter) {
  return [adapter.info?.vendor, adapter.info?.architecture].filter(Boolean).join(' ') || 'GPU';
}

/** Why the transformer variant the page would run on `adapter` cannot run there, or null: an fp16 one (asked for with
 * ?precision, or the package's default) computes in float16, which WebGPU has only with shader-f16. */
async function float16Refusal(adapter) {
  if (adapter.features.has('shader-f16')) return null;
  const { transformer } = await loadManifest(fetchIO(packageUrl));
  const variant = select(transformer, 'onnxruntime', query.get('precision') || null, true, false);
  if (variant.precision !== 'fp16') return null;
  return `transformer ${variant.name} computes in float16 and needs shader-f16, which this adapter `
    + `(${adapterName(adapter)}) lacks`;
}

/** Open the package on `ort` with `executionProviders`; `fp16`: prefer an fp16 variant (manifest.js select). */
function openPackage(ort, executionProviders, backendName, fp16 = false) {
  return FitPipeline.load(fetchIO(packageUrl), { ort, backendName, executionProviders,
    lazyDecoder: true, precision: query.get('precision') || null, fp16,
    graphOptimizationLevel: query.get('optimization') ?? 'disabled' });
}

/** Open the package on the adapter's device; the device that ONNX Runtime created is watched for its loss. */
async function openOnWebGpu(adapter) {
  const ort = await import('/ort/ort.webgpu.min.mjs');
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = threads;
  ort.env.webgpu.adapter = adapter;
  const fp16 = adapter.features.has('shader-f16');
  const opened = await openPackage(ort, ['webgpu'], 'onnxruntime-web/webgpu', fp16);
  const device = await ort.env.webgpu.device;
  const state = { ep: 'webgpu', ort, adapter, device, fp16, lost: null, fallback: null, decoderEp: 'webgpu' };
  device?.lost.then((info) => { state.lost = info.message || info.reason || 'no reason given'; });
  return [opened, state];
}

async function openOnWasm(fallback) {
  ortWasm.env.wasm.wasmPaths = '/ort/';
  ortWasm.env.wasm.numThreads = threads;
  const opened = await openPackage(ortWasm, ['wasm'], 'onnxruntime-web');
  return [opened, { ep: 'wasm', ort: ortWasm, fallback, decoderEp: 'wasm' }];
}

/** The decoder's session, created once the page is usable: on WebGPU where it can be, else on WASM. */
async function openDecoder(opened, state) {
  try {
    await opened.loadDecoder();
  } catch (err) {
    if (state.ep !== 'webgpu' || !opened.vae) throw err;
    state.decoderFallback = await gpuFailure(err);
    state.decoderEp = 'wasm';
    await opened.vae.deactivate();
    opened.vae.executionProviders = ['wasm'];             // the WebGPU build runs WASM sessions too
    await opened.loadDecoder();
  }
}

/** Where the graphs run, for the status line. */
function placement() {
  const { ep, fallback, adapter, fp16 } = running;
  const variant = `transformer ${pipe.variant.name}`;
  if (ep === 'wasm') {
    return `${variant}, ${threads} WASM thread${threads === 1 ? '' : 's'}${fallback ? `; not on WebGPU: ${fallback}` : ''}`;
  }
  return `${variant} on WebGPU (${adapterName(adapter)}${fp16 ? ', shader-f16' : ', no shader-f16'})`;
}

function decoderPlacement() {
  if (!pipe.vae || running.ep === 'wasm') return '';
  return running.decoderEp === 'webgpu' ? '; decoder on WebGPU' : `; decoder on WASM: ${running.decoderFallback}`;
}

function use(opened, state) {
  [pipe, running] = [opened, state];
  document.body.dataset.ep = state.ep;
  decoderReady = openDecoder(opened, state);
  return decoderReady;
}

/** Leave WebGPU for WASM (the session of the lost device is dropped, not awaited: its device may never answer). */
async function fallBackToWasm(reason) {
  const gpu = pipe;
  status(`Not on WebGPU: ${reason}; opening the model on WASM…`, true);
  gpu.release().catch(() => {});
  const [opened, state] = await openOnWasm(reason);
  use(opened, state).catch((err) => status(`Cannot open the decoder: ${err.message}`, true));
}

// -- generating ---------------------------------------------------------------------------------------------------

/** Generate `request` on the current pipeline; on WebGPU a lost device ends the wait at once. Returns {image, times}:
 * times[i] = ms from the start to the end of step i + 1, then to the image. */
async function generateOnce(request) {
  const on = pipe;
  const jobs = on.prepare(request);
  const total = request.sampler === 'dopri5' ? null : request.steps;
  const started = performance.now();
  const times = [];
  const run = on.generateMany(jobs, { onStep(done, _total, t) {
    if (pipe !== on) return;                              // an abandoned run on a lost device
    times.push(performance.now() - started);
    $('progress').value = total ? done / total : t;
    status(total ? `Step ${done} of ${total}` : `Step ${done} (t = ${t.toFixed(3)})`);
  } });
  let image;
  if (running.ep === 'webgpu') {
    const lost = running.device?.lost.then((info) => { throw new Error(info.message || 'device lost'); });
    lost?.catch(() => {});                                // no unhandled rejection when the run wins
    [image] = await (lost ? Promise.race([run, lost]) : run);
  } else [image] = await run;
  times.push(performance.now() - started);
  return { image, times };
}

/** Per-step and decode times of bench runs (median over runs). */
function benchLine(runs, request) {
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const steps = runs.flatMap(({ times }) => times.slice(0, -1).map((t, i) => t - (i ? times[i - 1] : 0)));
  const decode = runs.map(({ times }) => times.at(-1) - times.at(-2));
  const whole = runs.map(({ times }) => times.at(-1));
  const where = running.ep === 'webgpu' ? `WebGPU${running.decoderEp === 'webgpu' ? '' : ', decoder on WASM'}` : 'WASM';
  return `bench, ${runs.length} more run${runs.length === 1 ? '' : 's'} of ${request.width}×${request.height} `
    + `${request.sampler} on ${where}: step ${milliseconds(median(steps))} (median of ${steps.length}; `
    + `min ${milliseconds(Math.min(...steps))}), decode ${milliseconds(median(decode))}, image ${seconds(median(whole))}`;
}

async function generate(event) {
  event?.preventDefault();
  if (busy || !pipe) return;
  busy = true;
  $('generate').disabled = true;
  document.body.dataset.state = 'busy';
  const request = readRequest();
  const started = performance.now();
  try {
    $('progress').value = 0;
    status('Generating…');
    await decoderReady.catch(() => {});
    let result;
    try {
      result = await generateOnce(request);
    } catch (err) {
      // A request the engine refuses is refused on every device; anything else on WebGPU: run it on WASM.
      if (err instanceof GenerationError || running.ep !== 'webgpu') throw err;
      await fallBackToWasm(await gpuFailure(err));
      result = await generateOnce(request);
    }
    last = result.image;
    show(last);
    $('progress').value = 1;
    $('save').disabled = false;
    const took = `${last.width}×${last.height} in ${seconds(performance.now() - started)} on ${EP_LABELS[running.ep]}`;
    const bench = Number(query.get('bench') ?? 0);
    if (bench > 0) {
      const runs = [];
      for (let i = 0; i < bench; i++) runs.push(await generateOnce(request));
      globalThis.fitPage.bench = runs.map(({ times }) => times);
      status(`${took}; ${benchLine(runs, request)}`);
    } else {
      status(`${took}${running.fallback ? ` (not on WebGPU: ${running.fallback})` : ''}`);
    }
    document.body.dataset.state = 'done';
  } catch (err) {
    status(err.message, true);
    document.body.dataset.state = 'error';
  } finally {
    busy = false;
    $('generate').disabled = false;
  }
}

/** PNG bytes of the last image with its parameters as text chunks. */
async function lastPng() {
  const deflate = async (data) => new Uint8Array(await new Response(
    new Blob([data]).stream().pipeThrough(new CompressionStream('deflate'))).arrayBuffer());
  return pngBytes(last.pixels, last.width, last.height, last.parameters, deflate);
}

async function save() {
  if (!last) return;
  const bytes = await lastPng();
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([bytes], { type: 'image/png' }));
  link.download = `fit-${last.parameters.seed}.png`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function start() {
  const started = performance.now();
  const asked = query.get('ep');
  let opened = null;
  try {
    if (asked !== null && !EXECUTION_PROVIDERS.includes(asked)) {
      throw new Error(`?ep must be one of ${EXECUTION_PROVIDERS.join(', ')}, got ${pyRepr(asked)}`);
    }
    let fallback = null;
    if (asked !== 'wasm') {
      const { adapter, reason } = await findAdapter();
      fallback = reason ?? (adapter ? await float16Refusal(adapter) : null);
      if (adapter && !fallback) {
        status('Loading the model on WebGPU…');
        try {
          opened = await openOnWebGpu(adapter);
        } catch (err) {
          fallback = await gpuFailure(err);
        }
      }
    }
    opened ??= await openOnWasm(fallback);
  } catch (err) {
    status(`Cannot open the model: ${err.message}`, true);
    document.body.dataset.state = 'failed';
    return;
  }
  const decoder = use(...opened);
  fillControls();
  $('generate').disabled = false;
  status(`Model loaded in ${seconds(performance.now() - started)} (${placement()}).`);
  document.body.dataset.state = 'ready';
  // The page is usable now; the decoder's session is created while the user picks settings.
  decoder.then(() => {
    if (!busy && running.ep === 'webgpu' && document.body.dataset.state === 'ready') {
      status(`Model loaded in ${seconds(performance.now() - started)} (${placement()}${decoderPlacement()}).`);
    }
  }, (err) => status(`Cannot open the decoder: ${err.message}`, true));
}

$('controls').addEventListener('submit', generate);
$('save').addEventListener('click', save);
globalThis.fitPage = {
  get pipeline() { return pipe; },
  /** 'webgpu' or 'wasm', where the transformer runs; the decoder's; why not WebGPU (null when it is). */
  get executionProvider() { return running?.ep ?? null; },
  get decoderExecutionProvider() { return running?.decoderEp ?? null; },
  get fallback() { return running?.fallback ?? null; },
  /** Destroy the WebGPU device (a test of the fallback); false when not on WebGPU. */
  loseDevice() {
    if (running?.ep !== 'webgpu' || !running.device) return false;
    running.device.destroy();
    return true;
  },
  pngBytes: lastPng,
};
start();
