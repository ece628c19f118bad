/**
 * Image generation from a model package (engines/pipeline.py): sizes, labels, noise, padded batches, sampling,
 * decoding, on an injected ONNX Runtime binding (onnxruntime-node or onnxruntime-web). The steps follow
 * docs/runtime-spec.md.
 * @module pipeline
 */

import { GraphContract } from './contract.js';
import { BackendError, PackageError } from './errors.js';
import { MANIFEST_NAME } from './manifest.js';
import { checkSeed, normals, sdeDraw } from './noise.js';
import { fetchIO, loadManifest } from './package.js';
import { asFloat, formatG, pyRepr } from './params.js';
import { EXTRAPOLATIONS, METHODS, canonicalExtrapolation, extrapolationName, ropeTables, withMethod } from './rope.js';
import { SAMPLERS, SettingError, checkCfg, checkSteps, guide, integrate } from './sampler.js';
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
 * A request the package cannot serve (size off the grid or too large, unknown class, bad settings).
 * `parameter`: the request parameter at fault (`width`, `cfg`, ...) when one is; the message then starts with its
 * name, which a command line replaces with its flag.
 */
export class GenerationError extends Error {
  constructor(message, parameter = null) { super(message); this.name = 'GenerationError'; this.parameter = parameter; }
}

/**
 * One image: pixel size, class id (null = unconditional) and the seed of its initial noise.
 * @typedef {object} Request
 * @property {number} width
 * @property {number} height
 * @property {number|string|null} [label] class id, id string or class name; null = unconditional
 * @property {number|bigint|string} [seed]
 */

/**
 * Everything besides the request that decides an image, resolved once from the request and the package defaults
 * ({@link FitPipeline#settings}); it drives the sampler and is what the PNG metadata records.
 */
export class GenerationSettings {
  /**
   * @param {import('./sampler.js').SamplerSettings} sampler
   * @param {number} cfg
   * @param {string} extrapolation canonical name of the RoPE method used
   * @param {import('./rope.js').RopeSettings} rope
   * @param {number} [scalePow]
   */
  constructor(sampler, cfg, extrapolation, rope, scalePow = 0) {
    Object.assign(this, { sampler, cfg, extrapolation, rope, scalePow });
  }

  /** Whether the network runs cond and uncond halves (classifier-free guidance on). */
  get guided() {
    return this.cfg !== 1;
  }

  /**
   * Requests whose settings share this key can share one step loop (and so one padded batch): same integrator,
   * steps and tolerances, guidance on or off. Scale and extrapolation may differ per row.
   */
  loopKey() {
    const s = this.sampler;
    return [s.method, s.steps, s.atol, s.rtol, this.guided, this.scalePow].join();
  }
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

  /** @private Use {@link FitPipeline.load}. */
  constructor(io, manifest, options) {
    this.#label = io.label;
    this.manifest = manifest;
    this.ort = options.ort;
    this.#readManifest(manifest);
    this.backendName = options.backendName ?? (this.ort.env?.versions?.node ? 'onnxruntime-node' : 'onnxruntime-web');
    const { verify, threads, executionProviders, graphOptimizationLevel, precision, warn } = options;
    const shared = { verify, threads, executionProviders, graphOptimizationLevel, warn };
    /** The transformer's backend. */
    this.backend = new OnnxRuntimeBackend(this.ort, io, manifest, { ...shared, precision: precision ?? null });
    /** The VAE decoder's backend, when the package has one. */
    this.vae = manifest.vae_decoder
      ? new OnnxRuntimeBackend(this.ort, io, manifest, { ...shared, graph: 'vae_decoder' }) : null;
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

  // -- request checks -----------------------------------------------------------------------------------------
  /** Token count of a W x H pixel image. */
  tokens(width, height) {
    const g = this.granularity;
    return Math.floor(width / g) * Math.floor(height / g);
  }

  /** Valid [width, height] sizes around a requested one, nearest first. */
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

  /** [width, height] if the package can generate it; with `snap` the nearest valid size instead. */
  checkSize(width, height, snap = false) {
    for (const [name, value] of [['width', width], ['height', height]]) {
      if (typeof value !== 'number' || !Number.isInteger(value)) {
        throw new GenerationError(`${name} must be a whole number of pixels, got ${pyRepr(value)}`, name);
      }
      if (value <= 0) throw new GenerationError(`${name} must be positive, got ${value}`, name);
    }
    const g = this.granularity;
    if (width % g || height % g) {
      const nearest = this.nearestSizes(width, height);
      if (snap && nearest.length) return nearest[0];
      const names = nearest.map(([w, h]) => `${w}x${h}`).join(', ') || 'none within the size limit';
      throw new GenerationError(`${width}x${height} is not on the model's ${g}-pixel grid; nearest valid sizes: `
        + `${names} (or pass --snap)`);
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

  /** Class id from an id (number or digit string) or a class name; null/undefined stay null (unconditional). */
  resolveLabel(label) {
    if (label === null || label === undefined) return null;
    if (typeof label === 'string') {
      const text = label.trim();
      if (/^-?\d+$/.test(text)) label = Number(text);
      else {
        const lowered = this.classNames.map((n) => n.toLowerCase());
        const index = lowered.indexOf(text.toLowerCase());
        if (index >= 0) return index;
        const matches = this.classNames.filter((n) => n.toLowerCase().includes(text.toLowerCase()));
        const hint = matches.length ? `; did you mean ${matches.slice(0, 3).join(', ')}?` : '';
        throw new GenerationError(`unknown class ${pyRepr(label)}${hint} (ids 0..${this.numClasses - 1})`);
      }
    }
    if (typeof label !== 'number' || !Number.isInteger(label)) {
      throw new GenerationError(`class must be an id or a name, got ${pyRepr(label)}`);
    }
    if (label < 0 || label >= this.numClasses) {
      throw new GenerationError(`class id ${label} is outside 0..${this.numClasses - 1}`);
    }
    return label;
  }

  /** RoPE settings of the package, or with the extrapolation `name` (canonical or alias). */
  ropeSettings(name) {
    return this.settings({ extrapolation: name }).rope;
  }

  /** {method, steps, atol, rtol} with the package's defaults filled in. */
  samplerSettings(sampler, steps) {
    return this.settings({ sampler, steps }).sampler;
  }

  /**
   * A request's settings resolved once against the package defaults (engines.pipeline.Pipeline.settings). `cfg` may
   * be a number or {float}. Throws GenerationError naming the parameter.
   * @returns {GenerationSettings}
   */
  settings({ steps, sampler, cfg, extrapolation } = {}) {
    const defaults = this.manifest.sampler;
    const method = sampler ?? defaults.method;
    const count = steps ?? defaults.steps;
    if (!SAMPLERS.includes(method)) {
      throw new GenerationError(`unknown sampler ${pyRepr(method)}; choose one of ${SAMPLERS.join(', ')}`, 'sampler');
    }
    let scale;
    try {
      checkSteps(count);
      scale = checkCfg(cfg ?? this.manifest.guidance.default_scale);
    } catch (err) {
      if (err instanceof SettingError) throw new GenerationError(err.message, err.parameter);
      throw err;
    }
    let rope = this.rope;
    let name = extrapolationName(this.rope);
    if (extrapolation !== null && extrapolation !== undefined) {
      try {
        name = canonicalExtrapolation(extrapolation);
      } catch {
        throw new GenerationError(`unknown extrapolation ${pyRepr(String(extrapolation))}; choose one of `
          + `${this.extrapolations.join(', ')}`, 'extrapolation');
      }
      if (!this.extrapolations.includes(name)) {
        throw new GenerationError(`this package does not offer extrapolation ${pyRepr(name)}; choose one of `
          + `${this.extrapolations.join(', ')}`, 'extrapolation');
      }
      rope = withMethod(this.rope, name, this.trainSide);
    }
    const samplerSettings = { method, steps: count, atol: defaults.atol, rtol: defaults.rtol };
    return new GenerationSettings(samplerSettings, scale, name, rope, this.manifest.guidance.scale_pow);
  }

  // -- generation ---------------------------------------------------------------------------------------------
  /** Initial latent noise (C, H/d, W/d) of a request: block 0 of its seed's stream. */
  noise(request) {
    const d = this.downsample;
    return normals(request.seed, this.channels * (request.height / d) * (request.width / d), 0);
  }

  /**
   * Latents (C, H/d, W/d) of `requests` (checked) sampled together as one padded batch. `settings`: one
   * {@link GenerationSettings} for all requests, or one per request; per-request settings must share
   * {@link GenerationSettings#loopKey} (their guidance scale and extrapolation may differ).
   * @param {Request[]} requests
   * @param {GenerationSettings|GenerationSettings[]} settings
   * @param {((done: number, total: number|null, t: number) => void)|null} [onStep]
   * @param {Float32Array[]|null} [noise] initial noise per request (default {@link FitPipeline#noise})
   * @returns {Promise<Float32Array[]>}
   */
  async sampleLatents(requests, settings, onStep = null, noise = null) {
    const perRow = Array.isArray(settings) ? settings : requests.map(() => settings);
    if (perRow.length !== requests.length || new Set(perRow.map((s) => s.loopKey())).size !== 1) {
      throw new GenerationError('requests sampled together need one sampler, step count and guidance on/off');
    }
    const first = perRow[0];
    const batch = new PaddedBatch(requests, this, perRow.map((s) => s.rope),
      noise ?? requests.map((r) => this.noise(r)));
    const useCfg = first.guided && requests.some((r) => r.label !== null);
    const cfg = perRow.map((s) => s.cfg);
    const constant = batch.feed(this.nullClass, useCfg);
    const outName = GraphContract.OUTPUT_NAMES[0];
    const B = requests.length;
    const rows = useCfg ? 2 * B : B;

    const velocity = async (x, t) => {
      const feed = this.contract.feed({ ...constant, x: useCfg ? twice(x) : x,
        t: Float32Array.from(useCfg ? [...t, ...t] : t) }, rows, batch.seq);
      const v = (await this.backend.infer(feed))[outName];
      return useCfg ? guide(v, B, batch.dim, cfg, t, this.guidedChannels, first.scalePow) : v;
    };

    const draw = sdeDraw(requests.map((r) => r.seed), batch.lengths, batch.dim);
    const latents = batch.unpack(await integrate(velocity, batch.x, B, first.sampler, draw, onStep));
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
      const input = this.manifest.vae_decoder.input_is_scaled ? latent : unscaled();
      const feed = { [this.vae.inputs[0]]: { dtype: 'float32', data: input, dims: [1, C, lh, lw] } };
      rgb = Object.values(await this.vae.infer(feed))[0];
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

  /** The request with its label resolved and its seed a BigInt; GenerationError for what the package cannot serve. */
  checkRequest(request) {
    const [width, height] = this.checkSize(request.width, request.height);
    let seed;
    try {
      seed = checkSeed(request.seed ?? 0);
    } catch (err) {
      throw new GenerationError(err.message, 'seed');
    }
    return { width, height, label: this.resolveLabel(request.label ?? null), seed };
  }

  /**
   * Several images of any sizes sampled in one padded batch; each depends only on its own seed.
   * @param {Request[]} requests
   * @param {{steps?: number, sampler?: string, cfg?: number, extrapolation?: string, settings?: GenerationSettings,
   *   onStep?: (done: number, total: number|null, t: number) => void}} [options] `settings` (from
   *   {@link FitPipeline#settings}) instead of steps/sampler/cfg/extrapolation
   * @returns {Promise<Image[]>}
   */
  async generateMany(requests, { steps, sampler, cfg, extrapolation, settings, onStep } = {}) {
    if (!requests?.length) throw new GenerationError('no requests to generate');
    const used = settings ?? this.settings({ steps, sampler, cfg, extrapolation });
    const resolved = requests.map((r) => this.checkRequest(r));
    const latents = await this.sampleLatents(resolved, used, onStep);
    const images = [];
    for (let i = 0; i < resolved.length; i++) {
      const r = resolved[i];
      images.push({ pixels: await this.decode(latents[i], r.height, r.width), width: r.width, height: r.height,
        parameters: this.parameters(r, used) });
    }
    return images;
  }

  /** The parameters of one image as stored in its PNG text chunks (cfg as {float}): what was actually used. */
  parameters(request, settings) {
    const label = request.label ?? null;
    const seed = BigInt(request.seed ?? 0);
    return {
      model: this.name, width: request.width, height: request.height, class: label,
      class_name: label !== null && label < this.classNames.length ? this.classNames[label] : null,
      seed: Number.isSafeInteger(Number(seed)) ? Number(seed) : seed,
      sampler: settings.sampler.method, steps: settings.sampler.steps, cfg: asFloat(settings.cfg),
      extrapolation: settings.extrapolation, backend: this.backendName, variant: this.variant.name,
    };
  }

  /**
   * One image of `width` x `height` pixels (the package default size when omitted).
   * @param {Request & {steps?: number, sampler?: string, cfg?: number, extrapolation?: string, snap?: boolean,
   *   onStep?: (done: number, total: number|null, t: number) => void}} request
   * @returns {Promise<Image>}
   */
  async generate({ width, height, label = null, seed = 0, steps, sampler, cfg, extrapolation, snap = false,
    onStep } = {}) {
    const [w, h] = this.checkSize(width ?? this.defaultSize[0], height ?? this.defaultSize[1], snap);
    const request = this.checkRequest({ width: w, height: h, label, seed });
    const settings = this.settings({ steps, sampler, cfg, extrapolation });
    const [image] = await this.generateMany([request], { settings, onStep });
    return image;
  }
}

/** Requests of different sizes as one (B, N_max) token batch: tokens, mask, labels and RoPE tables. */
export class PaddedBatch {
  /**
   * @param {Request[]} requests checked requests
   * @param {FitPipeline} pipe
   * @param {import('./rope.js').RopeSettings[]} rope per request
   * @param {Float32Array[]} noise initial latent noise (C, H/d, W/d) per request
   */
  constructor(requests, pipe, rope, noise) {
    const p = pipe.patchSize;
    const d = pipe.downsample;
    this.p = p;
    this.channels = pipe.channels;
    this.grids = requests.map((r) => [r.height / (d * p), r.width / (d * p)]);
    this.lengths = this.grids.map(([h, w]) => h * w);
    const b = requests.length;
    const n = Math.max(...this.lengths);
    const dim = pipe.channels * p * p;
    const D = pipe.rope.headDim;
    /** N_max, the padded sequence length, and C*p*p, the token width. */
    this.seq = n;
    this.dim = dim;
    this.x = new Float32Array(b * n * dim);
    this.mask = new Float32Array(b * n);
    this.cos = new Float32Array(b * n * D);
    this.sin = new Float32Array(b * n * D);
    this.grids.forEach(([h, w], i) => {
      this.x.set(patchify(noise[i], pipe.channels, h * p, w * p, p), i * n * dim);
      this.mask.fill(1, i * n, i * n + this.lengths[i]);
      const tables = ropeTables(rope[i], h, w);
      this.cos.set(tables.cos, i * n * D);
      this.sin.set(tables.sin, i * n * D);
    });
    this.y = BigInt64Array.from(requests, (r) => BigInt(r.label === null ? pipe.nullClass : r.label));
  }

  /** The per-call constant inputs, doubled into [cond; uncond] halves for CFG. */
  feed(nullClass, cfg) {
    if (!cfg) return { y: this.y, rope_cos: this.cos, rope_sin: this.sin, mask: this.mask };
    const y = BigInt64Array.from([...this.y, ...this.y.map(() => BigInt(nullClass))]);
    return { y, rope_cos: twice(this.cos), rope_sin: twice(this.sin), mask: twice(this.mask) };
  }

  /** The batch's tokens (B, N_max, C*p*p) -> each request's latent (C, h*p, w*p). */
  unpack(x) {
    const { seq, dim } = this;
    return this.grids.map(([h, w], i) => unpatchify(x.subarray(i * seq * dim, (i * seq + this.lengths[i]) * dim), h, w,
      this.p, this.channels));
  }
}

/** A typed array followed by itself (the cond and uncond halves of a guided call). */
function twice(a) {
  const out = new a.constructor(a.length * 2);
  out.set(a);
  out.set(a, a.length);
  return out;
}

// ------------------------------------------------------------------------------------------------------------
// Tokens <-> latents
// ------------------------------------------------------------------------------------------------------------

/** (C, H, W) -> (H/p * W/p, C*p*p) tokens, channel order (c, p1, p2). */
export function patchify(latent, channels, height, width, p) {
  const h = height / p;
  const w = width / p;
  const dim = channels * p * p;
  const out = new Float32Array(h * w * dim);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const token = (r * w + c) * dim;
      for (let ch = 0; ch < channels; ch++) {
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) {
            out[token + ch * p * p + i * p + j] = latent[(ch * height + r * p + i) * width + c * p + j];
          }
        }
      }
    }
  }
  return out;
}

/** (h*w, C*p*p) tokens -> (C, h*p, w*p). */
export function unpatchify(tokens, h, w, p, channels) {
  const height = h * p;
  const width = w * p;
  const dim = channels * p * p;
  const out = new Float32Array(channels * height * width);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const token = (r * w + c) * dim;
      for (let ch = 0; ch < channels; ch++) {
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) {
            out[(ch * height + r * p + i) * width + c * p + j] = tokens[token + ch * p * p + i * p + j];
          }
        }
      }
    }
  }
  return out;
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
