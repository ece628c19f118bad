/**
 * Image generation from a model package (engines/pipeline.py): the request check (prepare), noise, sampling one
 * padded batch, decoding, on an injected ONNX Runtime binding (onnxruntime-node or onnxruntime-web). The steps follow
 * docs/runtime-spec.md.
 * @module pipeline
 */

import { GraphContract, VaeDecoderContract, patchify } from './contract.js';
import { BackendError, PackageError } from './errors.js';
import { MANIFEST_NAME } from './manifest.js';
import { SEED_LIMIT, checkSeed, normals, sdeDraw } from './noise.js';
import { fetchIO, loadManifest } from './package.js';
import { asFloat, formatG, pyRepr, pyTypeName } from './params.js';
import { ENGINE_LIMITS, GenerationError, GenerationSettings, Jobs, checkCost } from './request.js';
import { EXTRAPOLATIONS, METHODS, canonicalExtrapolation, extrapolationName, withMethod } from './rope.js';
import {
  SAMPLERS, SHIFTED, SettingError, checkCfg, checkSteps, checkTailCompression, checkTimeShift, guide, integrate,
} from './sampler.js';
import { OnnxRuntimeBackend } from './session.js';

const f32 = Math.fround;

/** Approximate SD-VAE latent -> RGB map for packages without vae_decoder.onnx (rows: latent channel). */
const SD_LATENT_RGB = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473]].map((row) => row.map(f32));

/** Why engines.rope.RopeSettings refuses a manifest's rope section, or null. */
function ropeProblem(rope) {
  if (!METHODS.includes(rope.method)) {
    return `unknown RoPE method ${pyRepr(rope.method)}; choose one of ${METHODS.join(', ')}`;
  }
  if (rope.head_dim % 4) return `head_dim must be a multiple of 4 for 2D RoPE, got ${rope.head_dim}`;
  if (rope.method !== 'normal' && !rope.ori_max_pe_len) {
    return `RoPE method ${pyRepr(rope.method)} needs ori_max_pe_len (the training grid side in patches)`;
  }
  return null;
}

/**
 * @typedef {object} LoadOptions
 * @property {any} ort the ONNX Runtime module (onnxruntime-node or onnxruntime-web)
 * @property {string} [backendName] written into the parameters (default "onnxruntime-node" on onnxruntime-node,
 *   else "onnxruntime-web")
 * @property {boolean} [verify] check size and sha256 of every file opened (default true)
 * @property {number} [threads] intra-op threads (0 = ONNX Runtime's choice)
 * @property {string[]} [executionProviders]
 * @property {string} [graphOptimizationLevel] 'disabled' | 'basic' | 'extended' | 'all' (default 'all')
 * @property {boolean} [lazyDecoder] create the VAE session on the first decode instead of at load
 * @property {string|null} [precision] transformer variant: a variant name or a precision (fp32, int8, fp16); null:
 *   the manifest's default variant (docs/package-format.md#variants)
 * @property {boolean} [fp16] the device computes in float16 natively (onnxruntime-web on a WebGPU adapter with
 *   `shader-f16`): with no `precision`, an fp16 variant of the package comes before an fp32 default
 * @property {(message: string) => void} [warn] where warnings go (default console.warn)
 */

/**
 * @typedef {object} Image
 * @property {Uint8Array} pixels RGB, height x width x 3
 * @property {number} width
 * @property {number} height
 * @property {Record<string, any>} parameters what the PNG text chunks hold (cfg as {float})
 */

/** A loaded package plus its ONNX Runtime sessions. Create with {@link FitPipeline.load}; free with release(). */
export class FitPipeline {
  /**
   * Open a model package. `source`: where its files come from, a {@link import('./package.js').PackageIO} chosen
   * by the entry point (directoryIO of node.js for a directory), or the package folder's URL (read with fetchIO).
   * @param {import('./package.js').PackageIO|string|URL} source
   * @param {LoadOptions} options
   * @returns {Promise<FitPipeline>}
   */
  static async load(source, options) {
    const { ort } = options ?? {};
    if (!ort?.InferenceSession) throw new BackendError('pass the ONNX Runtime module as options.ort');
    const io = typeof source?.readManifest === 'function' ? source : fetchIO(String(source));
    const pipe = new FitPipeline(io, await loadManifest(io), options);
    try {
      await pipe.backend.activate();
      if (pipe.vae && !options.lazyDecoder) await pipe.vae.activate();
    } catch (err) {
      await pipe.release();
      throw err;
    }
    return pipe;
  }

  #label;
  #taps = [];

  /** @private Use {@link FitPipeline.load}. */
  constructor(io, manifest, options) {
    this.#label = io.label;
    this.manifest = manifest;
    this.ort = options.ort;
    this.#readManifest(manifest);
    this.backendName = options.backendName ?? (this.ort.env?.versions?.node ? 'onnxruntime-node' : 'onnxruntime-web');
    const { verify, threads, executionProviders, graphOptimizationLevel, precision, fp16, warn } = options;
    const shared = { verify, threads, executionProviders, graphOptimizationLevel, warn };
    /** The transformer's backend. */
    this.backend = new OnnxRuntimeBackend(this.ort, io, manifest, { ...shared, precision: precision ?? null,
      fp16: fp16 ?? false });
    /** The VAE decoder's backend, when the package has one. */
    this.vae = manifest.vae_decoder
      ? new OnnxRuntimeBackend(this.ort, io, manifest, { ...shared, graph: 'vae_decoder' }) : null;
  }

  /**
   * Run `during()` with `onInfer(feed, outputs)` seeing every transformer call of sampling (a calibration records
   * the feeds, a validation runs a reference on them; it may be async, and it may throw to stop sampling); the tap
   * is removed when `during` settles. Resolves to what `during` resolves to.
   * @template T
   * @param {(feed: Record<string, {dtype: string, data: any, dims: number[]}>, outputs: Record<string, Float32Array>)
   *   => (void|Promise<void>)} onInfer
   * @param {() => Promise<T>} during
   * @returns {Promise<T>}
   */
  async tap(onInfer, during) {
    this.#taps.push(onInfer);
    try {
      return await during();
    } finally {
      this.#taps.splice(this.#taps.indexOf(onInfer), 1);
    }
  }

  /** The transformer variant that runs ({name, file, precision, runtime, weights_from, ...}). */
  get variant() {
    return this.backend.variant;
  }

  /** The settings generation needs, from the checked manifest (docs/package-format.md). */
  #readManifest(manifest) {
    const { model, latent, rope, sizes } = manifest;
    if (model.learn_sigma || model.config.learn_sigma || model.out_token_dim !== model.token_dim) {
      throw new PackageError(`package ${this.#label}: the runtime serves FiTv2 velocity models; this one predicts `
        + 'noise and sigma (FiT v1), use fit.sampling with PyTorch');
    }
    this.contract = manifest.graph;
    this.patchSize = model.patch_size;
    this.channels = model.latent_channels;
    this.numClasses = model.num_classes;
    this.nullClass = model.null_class;
    this.classNames = [...(model.class_names ?? [])];
    this.space = latent.space;
    this.downsample = latent.downsample;
    this.scalingFactor = latent.scaling_factor;
    this.granularity = latent.pixel_granularity;
    if (this.space === 'pixel' && ![1, 3].includes(this.channels)) {
      throw new PackageError(`package ${this.#label}: a pixel-space model needs 1 or 3 channels, not ${this.channels}`);
    }
    this.maxTokens = sizes.max_tokens;
    this.defaultSize = [...sizes.default];
    this.trainSide = rope.ori_max_pe_len || Math.floor(Math.sqrt(sizes.train_token_budget));
    const problem = ropeProblem(rope);
    if (problem) {
      throw new PackageError(`package ${this.#label}: ${MANIFEST_NAME} is not usable (rope: ${problem}); re-export the `
        + 'package');
    }
    this.rope = { headDim: rope.head_dim, theta: rope.theta, method: rope.method, decouple: rope.decouple,
      oriMaxPeLen: rope.ori_max_pe_len };
    const methods = rope.methods.filter((name) => EXTRAPOLATIONS.includes(String(name).toLowerCase()));
    this.extrapolations = methods.length ? [...new Set(methods.map(canonicalExtrapolation))] : [...EXTRAPOLATIONS];
    this.guidedChannels = (manifest.guidance.cfg_channels || this.channels) * this.patchSize ** 2;
  }

  // -- lifecycle ----------------------------------------------------------------------------------------------
  /** Create the VAE decoder's session now (with `lazyDecoder` it is otherwise created on the first decode). */
  async loadDecoder() {
    await this.vae?.activate();
  }

  /** Release the ONNX Runtime sessions. */
  async release() {
    for (const backend of [this.backend, this.vae]) if (backend) await backend.deactivate();
  }

  /** The package name (manifest "name"). */
  get name() { return this.manifest.name; }

  // -- request checks (docs/runtime-spec.md §2) ---------------------------------------------------------------
  /** Token count of a W x H pixel image. */
  tokens(width, height) {
    const g = this.granularity;
    return Math.floor(width / g) * Math.floor(height / g);
  }

  /** Valid [width, height] sizes around a requested one, nearest first (at most 4). */
  nearestSizes(width, height) {
    const g = this.granularity;
    const options = new Map();
    for (const w of [Math.floor(width / g) * g, Math.ceil(width / g) * g]) {
      for (const h of [Math.floor(height / g) * g, Math.ceil(height / g) * g]) {
        const size = [Math.max(g, w), Math.max(g, h)];
        if (this.tokens(...size) <= this.maxTokens) options.set(size.join('x'), size);
      }
    }
    const dist = ([w, h]) => Math.abs(w - width) + Math.abs(h - height);
    return [...options.values()].sort((a, b) => dist(a) - dist(b) || a[0] - b[0] || a[1] - b[1]);
  }

  /**
   * [width, height] if the package can generate it; with `snap` the nearest valid size instead. GenerationError
   * naming the nearest valid sizes for sizes off the pixel grid (hint: `snap`) or too large.
   */
  checkSize(width, height, snap = false) {
    for (const [name, value] of [['width', width], ['height', height]]) {
      if (pyTypeName(value) !== 'int') {
        throw new GenerationError(`${name} must be a whole number of pixels, got ${pyRepr(value)}`, name);
      }
      if (value <= 0) throw new GenerationError(`${name} must be positive, got ${value}`, name);
    }
    [width, height] = [Number(width), Number(height)];
    const g = this.granularity;
    if (width % g || height % g) {
      const nearest = this.nearestSizes(width, height);
      if (snap && nearest.length) return nearest[0];
      const names = nearest.map(([w, h]) => `${w}x${h}`).join(', ') || 'none within the size limit';
      throw new GenerationError(`${width}x${height} is not on the model's ${g}-pixel grid; nearest valid sizes: `
        + `${names}`, null, { hint: nearest.length ? 'snap' : null });
    }
    const tokens = this.tokens(width, height);
    if (tokens > this.maxTokens) {
      const scale = Math.sqrt(this.maxTokens / tokens);
      const w = Math.max(g, Math.floor(Math.floor(width * scale) / g) * g);
      const h = Math.max(g, Math.floor(Math.floor(height * scale) / g) * g);
      throw new GenerationError(`${width}x${height} needs ${tokens} tokens, more than this model's maximum of `
        + `${this.maxTokens}; the largest size with this aspect ratio is about ${w}x${h}`);
    }
    return [width, height];
  }

  /** Class id from an id (number, BigInt or digit string) or a class name; null/undefined stay null (unconditional). */
  resolveLabel(label) {
    if (label === null || label === undefined) return null;
    if (typeof label === 'string') {
      const text = label.trim();
      if (/^-?\d+$/.test(text)) label = BigInt(text);
      else {
        const lowered = this.classNames.map((n) => n.toLowerCase());
        const index = lowered.indexOf(text.toLowerCase());
        if (index >= 0) return index;
        const matches = this.classNames.filter((n) => n.toLowerCase().includes(text.toLowerCase()));
        const hint = matches.length ? `; did you mean ${matches.slice(0, 3).join(', ')}?` : '';
        throw new GenerationError(`unknown class ${pyRepr(label)}${hint} (ids 0..${this.numClasses - 1})`);
      }
    }
    if (pyTypeName(label) !== 'int') throw new GenerationError(`class must be an id or a name, got ${pyRepr(label)}`);
    if (label < 0 || label >= this.numClasses) {
      throw new GenerationError(`class id ${label} is outside 0..${this.numClasses - 1}`);
    }
    return Number(label);
  }

  /** RoPE settings of the package, or with the extrapolation `name` (canonical or alias). */
  ropeSettings(name) {
    return this.settings({ extrapolation: name }).rope;
  }

  /** {method, steps, atol, rtol, timeShift, tailCompression} with the package's defaults filled in. */
  samplerSettings(sampler, steps) {
    return this.settings({ sampler, steps }).sampler;
  }

  /**
   * A request's settings resolved once against the package defaults; throws GenerationError naming the parameter.
   * `cfg`, `timeShift` and `tailCompression` may be a number or {float}; no `timeShift` (`tailCompression`): the
   * package's for the samplers it applies to (SHIFTED), 1 (0) for the others. `limits`: the largest steps and
   * guidance scale allowed (a server's policy; the engine's own by default).
   * @param {{steps?: any, sampler?: any, cfg?: any, extrapolation?: any, timeShift?: any, tailCompression?: any,
   *   limits?: import('./request.js').Limits}} [options]
   * @returns {GenerationSettings}
   */
  settings({ steps, sampler, cfg, extrapolation, timeShift, tailCompression, limits = ENGINE_LIMITS } = {}) {
    const defaults = this.manifest.sampler;
    const method = sampler ?? defaults.method;
    let count = steps ?? defaults.steps;
    if (typeof method !== 'string' || !SAMPLERS.includes(method)) {
      throw new GenerationError(`unknown sampler ${pyRepr(method)}; choose one of ${SAMPLERS.join(', ')}`, 'sampler');
    }
    let scale;
    let shift;
    let tail;
    try {
      count = checkSteps(count, limits.maxSteps);
      scale = checkCfg(cfg ?? this.manifest.guidance.default_scale, limits.maxCfg);
      shift = timeShift === null || timeShift === undefined ? null : checkTimeShift(timeShift);
      tail = tailCompression === null || tailCompression === undefined ? null : checkTailCompression(tailCompression);
      for (const [name, value, neutral] of [['time_shift', shift, 1], ['tail_compression', tail, 0]]) {
        if (value !== null && value !== neutral && !SHIFTED.includes(method)) {
          throw new SettingError(`${name} applies to ${SHIFTED.join(', ')}, not ${method}, which keeps its own `
            + 'schedule', name);
        }
      }
      const shifted = SHIFTED.includes(method);                 // absent: the package's, for the samplers it applies to
      shift ??= shifted ? defaults.time_shift : 1;
      tail ??= shifted ? defaults.tail_compression : 0;
    } catch (err) {
      if (err instanceof SettingError) throw new GenerationError(err.message, err.parameter);
      throw err;
    }
    let rope = this.rope;
    let name = extrapolationName(this.rope);
    if (extrapolation !== null && extrapolation !== undefined) {
      try {
        if (typeof extrapolation !== 'string') throw new TypeError(String(extrapolation));
        name = canonicalExtrapolation(extrapolation);
      } catch {
        throw new GenerationError(`unknown extrapolation ${pyRepr(extrapolation)}; choose one of `
          + `${this.extrapolations.join(', ')}`, 'extrapolation');
      }
      if (!this.extrapolations.includes(name)) {
        throw new GenerationError(`this package does not offer extrapolation ${pyRepr(name)}; choose one of `
          + `${this.extrapolations.join(', ')}`, 'extrapolation');
      }
      rope = withMethod(this.rope, name, this.trainSide);
    }
    const samplerSettings = { method, steps: count, atol: defaults.atol, rtol: defaults.rtol, timeShift: shift,
      tailCompression: tail };
    return new GenerationSettings(samplerSettings, scale, name, rope, this.manifest.guidance.scale_pow);
  }

  /**
   * Check a request once and return the jobs of its `num` images (a sequence made on access); throws
   * GenerationError.
   *
   * width, height: pixels (absent: the package default size); with `snap` a size off the pixel grid becomes the
   * nearest valid one. label: a class id, a class name, null (unconditional), or several (an array, or names and
   * ids separated by commas) cycled over the images. Image `i` (0-based) has seed `seed + i` (a number, BigInt or
   * digit string). steps, sampler, cfg, extrapolation, timeShift, tailCompression: absent for the package's.
   * Checks, in order: num, size, classes, seeds, settings (docs/runtime-spec.md §2), then the cost of an image
   * against `limits.maxCost`.
   * @param {{width?: any, height?: any, label?: any, seed?: any, num?: any, snap?: boolean, steps?: any,
   *   sampler?: any, cfg?: any, extrapolation?: any, timeShift?: any, tailCompression?: any,
   *   limits?: import('./request.js').Limits}} [request]
   * @returns {Jobs}
   */
  prepare({ width, height, label = null, seed = 0, num = 1, snap = false, steps, sampler, cfg, extrapolation,
    timeShift, tailCompression, limits = ENGINE_LIMITS } = {}) {
    if (pyTypeName(num) !== 'int' || num < 1) {
      throw new GenerationError(`num must be a whole number of at least 1, got ${pyRepr(num)}`, 'num');
    }
    const [w, h] = this.checkSize(width ?? this.defaultSize[0], height ?? this.defaultSize[1], snap);
    const parts = typeof label === 'string' ? label.split(',') : Array.isArray(label) ? label : [label];
    const labels = parts.length ? parts.map((part) => this.resolveLabel(part)) : [null];
    let first;
    try {
      first = checkSeed(seed);
    } catch (err) {
      throw new GenerationError(err.message, 'seed');
    }
    const last = first + BigInt(num) - 1n;
    if (last >= SEED_LIMIT) {
      throw new GenerationError(`seed ${first} with num ${num} needs seeds up to ${last}; seeds must be below 2**64`,
        'seed', { mentions: ['num'] });
    }
    const settings = this.settings({ steps, sampler, cfg, extrapolation, timeShift, tailCompression, limits });
    checkCost(this.tokens(w, h), settings, labels.some((label) => label !== null), limits);
    return new Jobs(w, h, labels, first, Number(num), settings);
  }

  // -- generation ---------------------------------------------------------------------------------------------
  /**
   * Initial latent noise (C, H/d, W/d) of a request: block 0 of its seed's portable stream, so an image depends
   * only on its own seed, never on what shares its batch.
   */
  noise(request) {
    const d = this.downsample;
    return normals(request.seed, this.channels * (request.height / d) * (request.width / d), 0);
  }

  /**
   * Latents (C, H/d, W/d) of `jobs` (from {@link FitPipeline#prepare}) sampled together as one padded batch. The
   * jobs' settings must share {@link GenerationSettings#loopKey} (their guidance scale and extrapolation may
   * differ). noise: the initial noise of each job instead of its seed's (validation).
   * @param {Iterable<import('./request.js').Job>} jobs
   * @param {((done: number, total: number|null, t: number) => void)|null} [onStep]
   * @param {Float32Array[]|null} [noise]
   * @returns {Promise<Float32Array[]>}
   */
  async sampleLatents(jobs, onStep = null, noise = null) {
    const list = [...jobs];
    if (!list.length) throw new GenerationError('no jobs to generate');
    const requests = list.map((job) => job.request);
    const perRow = list.map((job) => job.settings);
    if (new Set(perRow.map((s) => s.loopKey())).size !== 1) {
      throw new GenerationError('jobs sampled together need one sampler, step count and guidance on/off');
    }
    const first = perRow[0];
    const useCfg = first.guided && requests.some((r) => r.label !== null);
    const p = this.patchSize;
    const d = this.downsample;
    const initial = noise ?? requests.map((r) => this.noise(r));
    const batch = this.contract.paddedBatch(requests.map((r) => [r.height / (d * p), r.width / (d * p)]),
      perRow.map((s) => s.rope), requests.map((r) => (r.label === null ? this.nullClass : r.label)),
      requests.map((r, i) => patchify(initial[i], this.channels, r.height / d, r.width / d, p)),
      useCfg ? this.nullClass : null);
    const cfg = perRow.map((s) => s.cfg);
    const outName = GraphContract.OUTPUT_NAMES[0];
    const B = requests.length;
    const dim = this.contract.tokenDim;

    const velocity = async (x, t) => {
      const feed = batch.feed(t, x);
      const outputs = await this.backend.infer(feed);
      for (const onInfer of this.#taps) await onInfer(feed, outputs);
      const out = outputs[outName];
      return useCfg ? guide(out, B, dim, cfg, t, this.guidedChannels, first.scalePow) : out;
    };

    const draw = sdeDraw(requests.map((r) => r.seed), batch.lengths, dim);
    const latents = batch.unpack(await integrate(velocity, batch.x, B, first.sampler, draw, onStep), p);
    requests.forEach((request, i) => {
      if (!latents[i].every(Number.isFinite)) {
        throw new GenerationError(`sampling seed ${request.seed} gave non-finite latents (float32 overflow), so no `
          + `image is made; lower the guidance scale (cfg ${formatG(perRow[i].cfg)}) or check the package with `
          + 'fit-export validate');
      }
    });
    return latents;
  }

  /**
   * Latent (C, h, w) -> RGB pixels (H x W x 3): through vae_decoder.onnx when the package has one.
   * @param {Float32Array} latent
   * @param {number} height pixels
   * @param {number} width pixels
   */
  async decode(latent, height, width) {
    const C = this.channels;
    const lh = height / this.downsample;
    const lw = width / this.downsample;
    const factor = f32(this.scalingFactor);
    const unscaled = () => Float32Array.from(latent, (v) => v / factor);
    let rgb;
    if (this.space === 'pixel') {
      const z = unscaled();
      rgb = C === 1 ? new Float32Array([...z, ...z, ...z]) : z;
    } else if (this.vae) {
      await this.vae.activate();
      const contract = this.manifest.vaeGraph;
      const { BATCH, HEIGHT, WIDTH, OUTPUT_NAMES } = VaeDecoderContract;
      const input = this.manifest.vae_decoder.input_is_scaled ? latent : unscaled();
      const feed = contract.feed({ latent: input }, { [BATCH]: 1, [HEIGHT]: lh, [WIDTH]: lw });
      rgb = (await this.vae.infer(feed))[OUTPUT_NAMES[0]];
    } else {
      rgb = preview(unscaled(), factor, lh, lw, this.downsample);
    }
    if (!rgb.every(Number.isFinite)) {
      throw new GenerationError('the decoder gave non-finite pixels, so no image is made; check the package with '
        + 'fit-export validate');
    }
    const plane = height * width;
    const pixels = new Uint8Array(plane * 3);
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < plane; i++) {
        const value = f32(f32(f32(rgb[c * plane + i] + 1) * 127.5) + 0.5);
        pixels[i * 3 + c] = Math.trunc(Math.min(Math.max(value, 0), 255));
      }
    }
    return pixels;
  }

  /**
   * Images of `jobs` (from {@link FitPipeline#prepare}), all sampled in one padded batch, each with its parameters.
   * @param {Iterable<import('./request.js').Job>} jobs
   * @param {{onStep?: (done: number, total: number|null, t: number) => void}} [options]
   * @returns {Promise<Image[]>}
   */
  async generateMany(jobs, { onStep = null } = {}) {
    const list = [...jobs];
    const latents = await this.sampleLatents(list, onStep);
    const images = [];
    for (let i = 0; i < list.length; i++) {
      const { width, height } = list[i].request;
      images.push({ pixels: await this.decode(latents[i], height, width), width, height,
        parameters: this.parameters(list[i]) });
    }
    return images;
  }

  /**
   * The parameters of one image as stored in its PNG text chunks (cfg as {float}): what was actually used
   * (`tail_compression` only when it is not 0, so that images without it keep the parameters they had).
   */
  parameters(job) {
    const { request, settings } = job;
    const { label, seed } = request;
    const tail = settings.sampler.tailCompression;
    return {
      model: this.name, width: request.width, height: request.height, class: label,
      class_name: label !== null && label < this.classNames.length ? this.classNames[label] : null,
      seed: Number.isSafeInteger(Number(seed)) ? Number(seed) : seed,
      sampler: settings.sampler.method, steps: settings.sampler.steps, time_shift: asFloat(settings.sampler.timeShift),
      ...(tail !== 0 ? { tail_compression: asFloat(tail) } : {}),
      cfg: asFloat(settings.cfg),
      extrapolation: settings.extrapolation, backend: this.backendName, variant: this.variant.name,
    };
  }

  /**
   * One image of `width` x `height` pixels (the package default size when omitted): {@link FitPipeline#prepare}
   * then {@link FitPipeline#generateMany}.
   * @param {{width?: any, height?: any, label?: any, seed?: any, steps?: any, sampler?: any, cfg?: any,
   *   extrapolation?: any, timeShift?: any, tailCompression?: any, snap?: boolean, onStep?: (done: number,
   *   total: number|null, t: number) => void}} [request]
   * @returns {Promise<Image>}
   */
  async generate({ width, height, label, seed, steps, sampler, cfg, extrapolation, timeShift, tailCompression, snap,
    onStep } = {}) {
    const job = this.prepare({ width, height, label, seed, snap, steps, sampler, cfg, extrapolation, timeShift,
      tailCompression }).at(0);
    const [image] = await this.generateMany([job], { onStep });
    return image;
  }
}

/** Approximate RGB (3, H, W) in [-1, 1] of a (scaled) SD-VAE latent, upsampled, when no decoder is shipped. */
function preview(z, factor, lh, lw, d) {
  const H = lh * d;
  const W = lw * d;
  const rgb = new Float32Array(3 * H * W);
  for (let r = 0; r < 3; r++) {
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        let total = 0;
        for (let c = 0; c < 4; c++) {
          const value = f32(z[(c * lh + Math.floor(y / d)) * lw + Math.floor(x / d)] * factor);
          total = f32(total + f32(value * SD_LATENT_RGB[c][r]));
        }
        rgb[(r * H + y) * W + x] = total;
      }
    }
  }
  return rgb;
}
