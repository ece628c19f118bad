/**
 * FitPipeline: image generation from a FiT model package on an injected ONNX Runtime binding
 * (onnxruntime-node or onnxruntime-web). The steps follow docs/runtime-spec.md.
 * @module pipeline
 */

import { BackendError, MANIFEST_NAME, PackageError, selectVariant, validateManifest } from './manifest.js';
import { checkSeed, normals } from './noise.js';
import { EXTRAPOLATIONS, METHODS, canonicalExtrapolation, extrapolationName, ropeTables, withMethod } from './rope.js';
import { SAMPLERS, SettingError, checkCfg, checkSteps, dopri5, euler, guide, heun, sde } from './sampler.js';
import { asFloat, pyRepr } from './params.js';

const f32 = Math.fround;

/** Approximate SD-VAE latent -> RGB map for packages without vae_decoder.onnx (rows: latent channel). */
const SD_LATENT_RGB = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473]].map((row) => row.map(f32));

/**
 * A request the package cannot serve (size off the grid or too large, unknown class, bad settings).
 * `parameter`: the request parameter at fault (`width`, `cfg`, ...) when one is; the message then starts with its
 * name, which a command line replaces with its flag.
 */
export class GenerationError extends Error {
  constructor(message, parameter = null) { super(message); this.name = 'GenerationError'; this.parameter = parameter; }
}

/** The ONNX Runtime variants (`runtime: "onnxruntime"`) run on onnxruntime-node and onnxruntime-web alike. */
const VARIANT_RUNTIME = 'onnxruntime';

/** Python's `format(x, 'g')`: 6 significant digits, exponent form outside 1e-4 .. 1e6. */
function formatG(x) {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const [mantissa, e] = x.toExponential(5).split('e');
  const power = Number(e);
  const digits = mantissa.replace(/\.?0+$/, '');
  if (power < -4 || power >= 6) return `${digits}e${power < 0 ? '-' : '+'}${String(Math.abs(power)).padStart(2, '0')}`;
  return String(Number(x.toPrecision(6)));
}

/**
 * Where a package's files come from.
 * @typedef {object} PackageIO
 * @property {string} label how messages name the package
 * @property {string} manifestPath how messages name its manifest
 * @property {() => Promise<string>} readManifest the text of manifest.json (throws PackageError)
 * @property {(name: string) => Promise<Uint8Array>} readFile a file's bytes (throws PackageError when missing)
 * @property {(bytes: Uint8Array) => Promise<string>} sha256 lowercase hex digest
 * @property {(name: string) => string} [filePath] a local path ONNX Runtime can open (Node; external data)
 */

/**
 * @typedef {object} LoadOptions
 * @property {any} ort the ONNX Runtime module (onnxruntime-node or onnxruntime-web)
 * @property {PackageIO} [io] file access; default: fetch for a URL (and in browsers), the directory in Node
 * @property {string} [backendName] written into the parameters ("onnxruntime-node", "onnxruntime-web")
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
 * @typedef {object} Request
 * @property {number} width
 * @property {number} height
 * @property {number|string|null} [label] class id, id string or class name; null = unconditional
 * @property {number|bigint|string} [seed]
 */

/**
 * @typedef {object} Image
 * @property {Uint8Array} pixels RGB, height x width x 3
 * @property {number} width
 * @property {number} height
 * @property {Record<string, any>} parameters what the PNG text chunks hold (cfg as {float})
 */

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * Package files over fetch (browser, or Node with a URL); sha256 with WebCrypto.
 * @param {string} base URL of the package folder
 * @returns {PackageIO}
 */
export function fetchIO(base) {
  const root = base.endsWith('/') ? base : `${base}/`;
  const label = root.replace(/\/$/, '');
  async function get(name) {
    let response;
    try {
      response = await fetch(new URL(name, new URL(root, globalThis.location?.href)));
    } catch (err) {
      throw new PackageError(`package ${label}: cannot read ${name} (${err.message})`);
    }
    return response;
  }
  return {
    label,
    manifestPath: `${root}${MANIFEST_NAME}`,
    async readManifest() {
      const response = await get(MANIFEST_NAME);
      if (!response.ok) throw new PackageError(`package ${label} has no ${MANIFEST_NAME} (HTTP ${response.status})`);
      return response.text();
    },
    async readFile(name) {
      const response = await get(name);
      if (!response.ok) throw new PackageError(`package ${label}: ${name} is missing; re-export the package`);
      return new Uint8Array(await response.arrayBuffer());
    },
    async sha256(bytes) {
      return hex(await globalThis.crypto.subtle.digest('SHA-256', bytes));
    },
  };
}

const IN_NODE = typeof process !== 'undefined' && Boolean(process.versions?.node);

/** fetch for URLs (and everywhere in a browser); a local directory in Node. */
async function defaultIO(source) {
  const text = String(source);
  if (!IN_NODE || source instanceof URL || /^[a-z][a-z0-9+.-]*:\/\//i.test(text)) return fetchIO(text);
  const { directoryIO } = await import('./node.js');
  return directoryIO(text);
}

function firstLine(err) {
  return String(err?.message ?? err).trim().split('\n')[0];
}

export class FitPipeline {
  /**
   * Open a model package. `source`: the package folder's URL, or in Node a directory path; anything when
   * `options.io` gives the files.
   * @param {string|URL} source
   * @param {LoadOptions} options
   * @returns {Promise<FitPipeline>}
   */
  static async load(source, options) {
    const { ort } = options ?? {};
    if (!ort?.InferenceSession) throw new BackendError('pass the ONNX Runtime module as options.ort');
    const io = options.io ?? await defaultIO(source);
    const text = await io.readManifest();
    let doc;
    try {
      doc = JSON.parse(text);
    } catch (err) {
      throw new PackageError(`${io.manifestPath} is not valid JSON: ${firstLine(err)}`);
    }
    validateManifest(doc, io.manifestPath);
    const pipe = new FitPipeline(io, doc, options);
    await pipe.#open();
    return pipe;
  }

  /** @type {PackageIO} */ #io;
  #options;
  #session = null;
  #vae = null;
  #vaeLoading = null;
  #verified = new Set();

  /** @private */
  constructor(io, manifest, options) {
    this.#io = io;
    this.#options = { verify: true, threads: 0, graphOptimizationLevel: 'all', lazyDecoder: false, ...options };
    this.ort = options.ort;
    this.manifest = manifest;
    this.backendName = options.backendName ?? (IN_NODE ? 'onnxruntime-node' : 'onnxruntime-web');
    try {
      this.#readManifest(manifest);
    } catch (err) {
      if (err instanceof PackageError || err instanceof BackendError) throw err;
      const detail = err instanceof KeyError ? `missing field '${err.key}'` : firstLine(err);
      throw new PackageError(`package ${io.label}: ${MANIFEST_NAME} is not usable (${detail}); re-export the package`);
    }
  }

  #readManifest(manifest) {
    const need = (section, key) => {
      if (!(key in section)) throw new KeyError(key);
      return section[key];
    };
    const { model, latent, rope, sizes, guidance } = manifest;
    const config = model.config ?? {};
    if (config.learn_sigma || need(model, 'out_token_dim') !== need(model, 'token_dim')) {
      throw new PackageError(`package ${this.#io.label}: the runtime serves FiTv2 velocity models; this one predicts `
        + 'noise and sigma (FiT v1), use fit.sampling with PyTorch');
    }
    this.patchSize = Number(need(model, 'patch_size'));
    this.channels = Number(need(model, 'latent_channels'));
    this.numClasses = Number(need(model, 'num_classes'));
    this.nullClass = Number(need(model, 'null_class'));
    this.classNames = [...(model.class_names ?? [])];
    this.space = need(latent, 'space');
    this.downsample = Number(latent.downsample ?? 1);
    this.scalingFactor = Number(latent.scaling_factor ?? 1);
    this.granularity = Number(latent.pixel_granularity ?? this.downsample * this.patchSize);
    if (this.space === 'pixel' && ![1, 3].includes(this.channels)) {
      throw new PackageError(`package ${this.#io.label}: a pixel-space model needs 1 or 3 channels, not ${this.channels}`);
    }
    this.maxTokens = Number(need(sizes, 'max_tokens'));
    this.defaultSize = (sizes.default ?? [256, 256]).map(Number);
    this.trainSide = Number(rope.ori_max_pe_len || Math.round(Math.sqrt(need(sizes, 'train_token_budget'))));
    this.rope = { headDim: Number(need(rope, 'head_dim')), theta: Number(need(rope, 'theta')),
      method: need(rope, 'method'), decouple: Boolean(need(rope, 'decouple')), oriMaxPeLen: rope.ori_max_pe_len };
    if (this.rope.headDim % 4) throw new PackageError(`package ${this.#io.label}: head_dim must be a multiple of 4`);
    this.cfgDefault = Number(guidance.default_scale ?? 1);
    this.scalePow = Number(guidance.scale_pow ?? 0);
    this.guidedChannels = (guidance.cfg_channels || this.channels) * this.patchSize ** 2;
    this.samplerDefaults = manifest.sampler;
    this.tokenDim = this.channels * this.patchSize ** 2;
    const methods = (rope.methods ?? []).filter((n) => EXTRAPOLATIONS.includes(String(n).toLowerCase()));
    this.extrapolations = methods.length ? [...new Set(methods.map(canonicalExtrapolation))] : [...EXTRAPOLATIONS];
    if (!METHODS.includes(this.rope.method)) {
      throw new PackageError(`package ${this.#io.label}: ${MANIFEST_NAME} is not usable (rope: unknown RoPE method `
        + `${pyRepr(this.rope.method)}; choose one of ${METHODS.join(', ')}); re-export the package`);
    }
    let variant;
    try {
      variant = selectVariant(manifest.transformer, VARIANT_RUNTIME, this.#options.precision ?? null);
    } catch (err) {
      throw new BackendError(err.message);
    }
    /** The transformer variant that runs ({name, file, precision, runtime, weights_from}). */
    this.variant = variant;
    this.precision = variant.precision;
  }

  /** The package name (manifest "name"). */
  get name() { return this.manifest.name; }

  /** Bytes of a package file, checked against the manifest (size and sha256) once. */
  async #readVerified(name) {
    const bytes = await this.#io.readFile(name);
    const entry = this.manifest.files[name];
    if (this.#options.verify && !this.#verified.has(name)) {
      if (bytes.length !== entry.bytes) {
        throw new PackageError(`package ${this.#io.label}: ${name} has ${bytes.length} bytes, the manifest says `
          + `${entry.bytes} (truncated or replaced); re-export the package`);
      }
      if (await this.#io.sha256(bytes) !== entry.sha256) {
        throw new PackageError(`package ${this.#io.label}: sha256 of ${name} does not match the manifest `
          + '(corrupt or replaced); re-export the package');
      }
      this.#verified.add(name);
    }
    return bytes;
  }

  #sessionOptions(extra = {}) {
    const o = this.#options;
    const options = { graphOptimizationLevel: o.graphOptimizationLevel, ...extra };
    if (o.threads) options.intraOpNumThreads = o.threads;
    if (o.executionProviders) options.executionProviders = o.executionProviders;
    return options;
  }

  async #createSession(name, externalData) {
    const bytes = await this.#readVerified(name);
    const data = externalData ? await this.#readVerified(externalData) : null;
    const options = this.#sessionOptions();
    try {
      if (data) {
        if (this.#io.filePath) return await this.ort.InferenceSession.create(this.#io.filePath(name), options);
        options.externalData = [{ path: externalData, data }];
      }
      return await this.ort.InferenceSession.create(bytes, options);
    } catch (err) {
      throw new BackendError(`ONNX Runtime cannot load ${name}: ${firstLine(err)}`);
    }
  }

  async #open() {
    const variant = this.variant;
    try {
      this.#session = await this.#createSession(variant.file, variant.weights_from);
    } catch (err) {
      // A copy tuned for ONNX Runtime (opset-23 fused ops) that this build cannot load: run the standard graph.
      const standard = variant.runtime === VARIANT_RUNTIME
        ? selectVariant(this.manifest.transformer, VARIANT_RUNTIME, variant.precision, false) : null;
      if (!(err instanceof BackendError) || !standard || standard.runtime !== null) throw err;
      const version = this.ort.env?.versions?.common;
      (this.#options.warn ?? console.warn)(`ONNX Runtime${version ? ` ${version}` : ''} cannot load ${variant.file} `
        + `(${err.message.replace(/^ONNX Runtime cannot load [^:]*: /, '')}); running ${standard.file}`);
      this.variant = standard;
      this.#session = await this.#createSession(standard.file, standard.weights_from);
    }
    if (this.manifest.vae_decoder && !this.#options.lazyDecoder) await this.#decoder();
  }

  async #decoder() {
    if (!this.manifest.vae_decoder) return null;
    this.#vaeLoading ??= this.#createSession(this.manifest.vae_decoder.file, null).then((s) => { this.#vae = s; return s; });
    return this.#vaeLoading;
  }

  /** Create the VAE decoder's session now (with `lazyDecoder` it is otherwise created on the first decode). */
  async loadDecoder() {
    await this.#decoder();
  }

  /** Release the ONNX Runtime sessions. */
  async release() {
    for (const session of [this.#session, this.#vae]) if (session) await session.release();
    this.#session = null;
    this.#vae = null;
  }

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
        throw new GenerationError(`unknown class '${label}'${hint} (ids 0..${this.numClasses - 1})`);
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

  /**
   * A request's settings resolved once against the package defaults (engines.pipeline.Pipeline.settings):
   * {sampler: {method, steps, atol, rtol}, cfg, extrapolation (canonical name), rope, scalePow}. `cfg` may be a
   * number or {float}. Throws GenerationError naming the parameter.
   */
  settings({ steps, sampler, cfg, extrapolation } = {}) {
    const d = this.samplerDefaults;
    const method = sampler ?? d.method;
    const count = steps ?? d.steps;
    if (!SAMPLERS.includes(method)) {
      throw new GenerationError(`unknown sampler ${pyRepr(method)}; choose one of ${SAMPLERS.join(', ')}`, 'sampler');
    }
    let scale;
    try {
      checkSteps(count);
      scale = checkCfg(cfg ?? this.cfgDefault);
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
    return { sampler: { method, steps: count, atol: Number(d.atol ?? 1e-6), rtol: Number(d.rtol ?? 1e-3) },
      cfg: scale, extrapolation: name, rope, scalePow: this.scalePow };
  }

  /** RoPE settings of the package, or with the extrapolation `name` (canonical or alias). */
  ropeSettings(name) {
    return this.settings({ extrapolation: name }).rope;
  }

  /** {method, steps, atol, rtol} with the package's defaults filled in. */
  samplerSettings(sampler, steps) {
    return this.settings({ sampler, steps }).sampler;
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

  // -- generation ---------------------------------------------------------------------------------------------
  /**
   * One image.
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

  /**
   * Several images of any sizes sampled in one padded batch; each depends only on its own seed.
   * @param {Request[]} requests
   * @param {{steps?: number, sampler?: string, cfg?: number, extrapolation?: string, settings?: object,
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

  /** Initial latent noise (C, H/d, W/d) of a request: block 0 of its seed's stream. */
  noise(request) {
    const d = this.downsample;
    return normals(request.seed, this.channels * (request.height / d) * (request.width / d), 0);
  }

  /**
   * Latents (C, H/d, W/d) of `requests` (checked) sampled together as one padded batch. `used`: one result of
   * {@link FitPipeline#settings} for all requests, or one per request; per-request settings must share the
   * sampler, its steps and tolerances and guidance on/off (their guidance scale and extrapolation may differ).
   * @returns {Promise<Float32Array[]>}
   */
  async sampleLatents(requests, used, onStep = null, noise = null) {
    const perRow = Array.isArray(used) ? used : requests.map(() => used);
    const loopKey = (u) => [u.sampler.method, u.sampler.steps, u.sampler.atol, u.sampler.rtol, u.cfg !== 1,
      u.scalePow].join();
    if (perRow.length !== requests.length || new Set(perRow.map(loopKey)).size !== 1) {
      throw new GenerationError('requests sampled together need one sampler, step count and guidance on/off');
    }
    const settings = perRow[0].sampler;
    const cfg = perRow.map((u) => u.cfg);
    const p = this.patchSize;
    const d = this.downsample;
    const C = this.tokenDim;
    const D = this.rope.headDim;
    const grids = requests.map((r) => [r.height / (d * p), r.width / (d * p)]);
    const lengths = grids.map(([h, w]) => h * w);
    const B = requests.length;
    const N = Math.max(...lengths);
    const x = new Float32Array(B * N * C);
    const mask = new Float32Array(B * N);
    const cos = new Float32Array(B * N * D);
    const sin = new Float32Array(B * N * D);
    requests.forEach((r, i) => {
      const [h, w] = grids[i];
      x.set(patchify(noise ? noise[i] : this.noise(r), this.channels, h * p, w * p, p), i * N * C);
      mask.fill(1, i * N, i * N + lengths[i]);
      const tables = ropeTables(perRow[i].rope, h, w);
      cos.set(tables.cos, i * N * D);
      sin.set(tables.sin, i * N * D);
    });
    const y = BigInt64Array.from(requests, (r) => BigInt(r.label === null ? this.nullClass : r.label));
    const useCfg = perRow[0].cfg !== 1 && requests.some((r) => r.label !== null);
    const ort = this.ort;
    const twice = (a) => { const out = new a.constructor(a.length * 2); out.set(a); out.set(a, a.length); return out; };
    const batch = useCfg ? 2 * B : B;
    const constant = {
      y: new ort.Tensor('int64', useCfg ? BigInt64Array.from([...y, ...y.map(() => BigInt(this.nullClass))]) : y,
        [batch]),
      rope_cos: new ort.Tensor('float32', useCfg ? twice(cos) : cos, [batch, N, D]),
      rope_sin: new ort.Tensor('float32', useCfg ? twice(sin) : sin, [batch, N, D]),
      mask: new ort.Tensor('float32', useCfg ? twice(mask) : mask, [batch, N]),
    };
    const session = this.#session;
    const half = this.manifest.transformer.inputs[0].dtype === 'float16';
    const outName = session.outputNames[0];
    const velocity = async (state, t) => {
      const xs = useCfg ? twice(state) : state;
      const feed = {
        ...constant,
        x: half ? new ort.Tensor('float16', toHalf(xs), [batch, N, C]) : new ort.Tensor('float32', xs, [batch, N, C]),
        t: new ort.Tensor('float32', Float32Array.from(useCfg ? [...t, ...t] : t), [batch]),
      };
      let out;
      try {
        out = (await session.run(feed))[outName].data;
      } catch (err) {
        throw new BackendError(`ONNX Runtime failed: ${firstLine(err)}`);
      }
      const v = out instanceof Uint16Array ? fromHalf(out) : out instanceof Float32Array ? out : Float32Array.from(out);
      return useCfg ? guide(v, B, C, cfg, t, this.guidedChannels, perRow[0].scalePow) : v;
    };
    const draw = (step) => {
      const out = new Float32Array(B * N * C);
      requests.forEach((r, i) => normals(r.seed, lengths[i] * C, step + 1, out.subarray(i * N * C)));
      return out;
    };
    let result;
    if (settings.method === 'euler') result = await euler(velocity, x, B, settings.steps, onStep);
    else if (settings.method === 'heun') result = await heun(velocity, x, B, settings.steps, onStep);
    else if (settings.method === 'sde') result = await sde(velocity, x, B, settings.steps, draw, onStep);
    else result = await dopri5(velocity, x, B, settings.atol, settings.rtol, onStep);
    return requests.map((r, i) => {
      const [h, w] = grids[i];
      const latent = unpatchify(result.subarray(i * N * C, (i * N + lengths[i]) * C), h, w, p, this.channels);
      if (!latent.every(Number.isFinite)) {
        throw new GenerationError(`sampling seed ${r.seed} gave non-finite latents (float32 overflow), so no image `
          + `is made; lower the guidance scale (cfg ${formatG(cfg[i])}) or check the package with fit-export validate`);
      }
      return latent;
    });
  }

  /**
   * Latent (C, h, w) -> RGB pixels (H x W x 3).
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
    } else if (this.manifest.vae_decoder) {
      const session = await this.#decoder();
      const input = this.manifest.vae_decoder.input_is_scaled ? latent : unscaled();
      try {
        const out = await session.run({ [session.inputNames[0]]: new this.ort.Tensor('float32', input, [1, C, lh, lw]) });
        rgb = out[session.outputNames[0]].data;
      } catch (err) {
        throw new BackendError(`ONNX Runtime failed in the VAE decoder: ${firstLine(err)}`);
      }
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
}

const F32_VIEW = new Float32Array(1);
const U32_VIEW = new Uint32Array(F32_VIEW.buffer);

/** float32 values -> IEEE half bits, rounded to nearest even (numpy's astype(float16)). */
export function toHalf(values) {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    F32_VIEW[0] = values[i];
    const x = U32_VIEW[0];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    const e = exp - 112;
    let h;
    if (exp === 0xff) h = 0x7c00 | (mant ? 0x200 : 0);
    else if (e >= 0x1f) h = 0x7c00;
    else if (e <= 0) {
      if (e < -10) h = 0;
      else {
        mant |= 0x800000;
        const shift = 14 - e;
        h = mant >>> shift;
        const rest = mant & ((1 << shift) - 1);
        const mid = 1 << (shift - 1);
        if (rest > mid || (rest === mid && (h & 1))) h++;
      }
    } else {
      h = (e << 10) | (mant >>> 13);
      const rest = mant & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
    }
    out[i] = sign | h;
  }
  return out;
}

/** IEEE half bits -> float32 values (exact). */
export function fromHalf(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) out[i] = sign * mant * 2 ** -24;
    else if (exp === 0x1f) out[i] = mant ? NaN : sign * Infinity;
    else out[i] = sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return out;
}

class KeyError extends Error {
  constructor(key) { super(key); this.key = key; }
}

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
