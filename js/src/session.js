/**
 * The ONNX Runtime backend (engines/backends/onnxruntime.py) on an injected binding, onnxruntime-node or
 * onnxruntime-web: session options, the session of one package graph from its verified bytes, the fallback from a
 * tuned variant this build cannot load to the standard one, and float16 conversion of `x` and `v`.
 * @module session
 */

import { BackendError, PackageError, firstLine } from './errors.js';
import { graphFiles, select } from './manifest.js';
import { verifyFiles } from './package.js';
import { pyRepr } from './params.js';

/**
 * Runs one graph of a package (`graph` "transformer" or "vae_decoder") in an InferenceSession.
 *
 * Options: `verify` (check size and sha256 of the files it opens, default true), `threads` (intra-op threads, 0 =
 * ONNX Runtime's choice), `executionProviders`, `graphOptimizationLevel` ('disabled' | 'basic' | 'extended' | 'all',
 * default 'all'), `precision` (which transformer variant: a variant name, a precision, or null for the manifest's
 * default variant), `fp16` (the device computes in float16 natively: with no precision asked for, an fp16 variant
 * comes before an fp32 default; see manifest.js select), `warn` (where the fallback warning goes, default
 * console.warn).
 */
export class OnnxRuntimeBackend {
  /** The runtime name variants are made for (`runtime: "onnxruntime"`): onnxruntime-node and -web alike. */
  name = 'onnxruntime';

  /** @type {any} */ session = null;
  /** @type {string[]} input names, once active */ inputs = [];
  #activating = null;
  #verified = new Set();

  /**
   * @param {any} ort the ONNX Runtime module
   * @param {import('./package.js').PackageIO} io
   * @param {import('./manifest.js').Manifest} manifest
   * @param {object} [options]
   */
  constructor(ort, io, manifest, { graph = 'transformer', verify = true, threads = 0, executionProviders = null,
    graphOptimizationLevel = 'all', precision = null, fp16 = false, warn = console.warn } = {}) {
    Object.assign(this, { ort, io, manifest, graph, verify, threads, executionProviders, graphOptimizationLevel });
    this.warn = warn;
    /** The graph file that runs. */
    this.file = graph === 'transformer' ? null : manifest[graph].file;
    /** The transformer variant that runs ({name, file, precision, runtime, weights_from, ...}). */
    this.variant = null;
    /** The standard variant of the same precision, when the one that runs is the tuned copy. */
    this.fallback = null;
    if (graph === 'transformer') {
      try {
        this.variant = select(manifest.transformer, this.name, precision, true, fp16);
      } catch (err) {
        if (err instanceof PackageError) throw new BackendError(err.message);
        throw err;
      }
      this.file = this.variant.file;
      if (this.variant.runtime === this.name) {
        const standard = select(manifest.transformer, this.name, this.variant.precision, false);
        if (standard.runtime === null) this.fallback = standard;
      }
    }
  }

  /** The name of the first execution provider asked for ('webgpu', 'wasm', 'cpu', ...), or null for ONNX Runtime's
   * default. */
  get executionProvider() {
    const first = this.executionProviders?.[0];
    return first === undefined ? null : (typeof first === 'string' ? first : first.name);
  }

  /** ONNX Runtime session options. */
  sessionOptions() {
    const options = { graphOptimizationLevel: this.graphOptimizationLevel };
    if (this.threads) options.intraOpNumThreads = this.threads;
    if (this.executionProviders) options.executionProviders = this.executionProviders;
    return options;
  }

  /** Create the session (once; later calls wait for the same one). */
  activate() {
    this.#activating ??= this.#activate();
    return this.#activating;
  }

  async #activate() {
    try {
      this.session = await this.#createSession(this.file);
    } catch (err) {
      // A copy tuned for ONNX Runtime (opset-23 fused ops) that this build cannot load: run the standard graph.
      if (!(err instanceof BackendError) || !this.fallback) throw err;
      const version = this.ort.env?.versions?.common;
      this.warn(`ONNX Runtime${version ? ` ${version}` : ''} cannot load ${this.file} `
        + `(${err.message.replace(/^ONNX Runtime cannot load [^:]*: /, '')}); running ${this.fallback.file}`);
      [this.variant, this.fallback] = [this.fallback, null];
      this.file = this.variant.file;
      this.session = await this.#createSession(this.file);
    }
    this.inputs = [...this.session.inputNames];
    return this;
  }

  /** The session of a graph file, from the verified bytes of the file and of its external data. */
  async #createSession(file) {
    const names = graphFiles(this.manifest, file);
    const [bytes, data] = await verifyFiles(this.io, this.manifest, names, this.verify ? this.#verified : null);
    const options = this.sessionOptions();
    try {
      if (data) {
        if (this.io.filePath) return await this.ort.InferenceSession.create(this.io.filePath(file), options);
        options.externalData = [{ path: names[1], data }];
      }
      return await this.ort.InferenceSession.create(bytes, options);
    } catch (err) {
      throw new BackendError(`ONNX Runtime cannot load ${file}: ${firstLine(err)}`);
    }
  }

  /** Release the session; {@link OnnxRuntimeBackend#activate} creates a new one. */
  async deactivate() {
    const session = this.session;
    this.session = null;
    this.#activating = null;
    if (session) await session.release();
  }

  /**
   * Run the graph. feed: input name -> {dtype, data, dims} (every graph input; float16 inputs given as float32
   * values); returns output name -> Float32Array.
   * @param {Record<string, {dtype: string, data: any, dims: number[]}>} feed
   * @returns {Promise<Record<string, Float32Array>>}
   */
  async infer(feed) {
    if (!this.session) {
      throw new BackendError(`${this.name} backend is not active; call activate()`);
    }
    const missing = this.inputs.filter((name) => !Object.hasOwn(feed, name));
    const unexpected = Object.keys(feed).filter((name) => !this.inputs.includes(name));
    if (missing.length || unexpected.length) {
      throw new BackendError(`${this.name} feed does not match the graph: missing ${pyRepr(missing)}, unexpected `
        + `${pyRepr(unexpected)}`);
    }
    let out;
    try {
      const tensors = {};
      for (const [name, { dtype, data, dims }] of Object.entries(feed)) {
        tensors[name] = new this.ort.Tensor(dtype, dtype === 'float16' ? toHalf(data) : data, dims);
      }
      out = await this.session.run(tensors);
    } catch (err) {
      throw new BackendError(`ONNX Runtime failed${this.graph === 'vae_decoder' ? ' in the VAE decoder' : ''}: `
        + `${firstLine(err)}`);
    }
    return Object.fromEntries(this.session.outputNames.map((name) => {
      const values = out[name].data;
      return [name, values instanceof Uint16Array ? fromHalf(values)
        : values instanceof Float32Array ? values : Float32Array.from(values)];
    }));
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
