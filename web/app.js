/**
 * The FiT web page: the js/ core on onnxruntime-web. The page is served by `fit-web` (or any static host that sends
 * the headers in docs/javascript.md); query parameters: ?package=URL (default /package/), ?threads=N (WASM threads),
 * ?precision=NAME (a transformer variant or precision, as fit-run --precision; default: the package's default variant),
 * ?optimization=disabled|basic|extended|all (ONNX Runtime graph optimization, default disabled: the first image comes
 * 0.2-0.4 s sooner on a 2-core CPU, with the default model's pixels and warm speed unchanged, as its transformer
 * variant is fused at export; `all` may run a package without such a variant faster once loaded).
 */
import * as ort from '/ort/ort.wasm.min.mjs';
import { FitPipeline, SAMPLERS, fetchIO, pngBytes } from '/js/src/index.js';
import { pyNumber } from '/js/src/params.js';

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const status = (text, error = false) => { $('status').textContent = text; $('status').className = error ? 'error' : ''; };

ort.env.wasm.wasmPaths = '/ort/';
// Threads need cross-origin isolation: then one per core, at most 4 (on 2 cores, 2 threads gave a warm image 1.5x
// sooner than 1; see docs/javascript.md, Speed).
const threadsByDefault = globalThis.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
ort.env.wasm.numThreads = Number(query.get('threads') ?? threadsByDefault);

let pipe = null;
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

async function generate(event) {
  event?.preventDefault();
  if (busy || !pipe) return;
  busy = true;
  $('generate').disabled = true;
  document.body.dataset.state = 'busy';
  const request = readRequest();
  const started = performance.now();
  try {
    const total = request.sampler === 'dopri5' ? null : request.steps;
    $('progress').value = 0;
    status('Generating…');
    // The page has no snap control: a size off the grid is the engine's message as it is (its hint is not shown).
    [last] = await pipe.generateMany(pipe.prepare(request), { onStep(done, _total, t) {
      $('progress').value = total ? done / total : t;
      status(total ? `Step ${done} of ${total}` : `Step ${done} (t = ${t.toFixed(3)})`);
    } });
    show(last);
    $('progress').value = 1;
    $('save').disabled = false;
    status(`${last.width}×${last.height} in ${((performance.now() - started) / 1000).toFixed(2)} s`);
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
  try {
    pipe = await FitPipeline.load(fetchIO(query.get('package') ?? '/package/'), { ort,
      backendName: 'onnxruntime-web', executionProviders: ['wasm'], lazyDecoder: true,
      precision: query.get('precision') || null, graphOptimizationLevel: query.get('optimization') ?? 'disabled' });
  } catch (err) {
    status(`Cannot open the model: ${err.message}`, true);
    document.body.dataset.state = 'failed';
    return;
  }
  fillControls();
  $('generate').disabled = false;
  status(`Model loaded in ${((performance.now() - started) / 1000).toFixed(2)} s (transformer ${pipe.variant.name}, `
    + `${ort.env.wasm.numThreads} WASM `
    + `thread${ort.env.wasm.numThreads === 1 ? '' : 's'}).`);
  document.body.dataset.state = 'ready';
  // The page is usable now; the decoder's session is created while the user picks settings.
  pipe.loadDecoder().catch((err) => status(`Cannot open the decoder: ${err.message}`, true));
}

$('controls').addEventListener('submit', generate);
$('save').addEventListener('click', save);
globalThis.fitPage = { get pipeline() { return pipe; }, pngBytes: lastPng };
start();
