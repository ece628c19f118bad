/**
 * Package manifest checks (docs/runtime-spec.md §1), with the Python runtime's messages.
 * @module manifest
 */

export const FORMAT = 'fit-package';
export const FORMAT_VERSION = 1;
export const MANIFEST_NAME = 'manifest.json';
export const INPUT_NAMES = ['x', 't', 'y', 'rope_cos', 'rope_sin', 'mask'];
export const OUTPUT_NAMES = ['v'];
export const VAE_INPUT_NAMES = ['latent'];
export const VAE_OUTPUT_NAMES = ['image'];
const PRECISIONS = ['fp32', 'fp16'];
const LATENT_SPACES = ['sd-vae', 'pixel'];

/** A package that is missing, unreadable, of an unknown version or does not match its hashes. */
export class PackageError extends Error {
  constructor(message) { super(message); this.name = 'PackageError'; }
}

/** ONNX Runtime could not load or run a graph. */
export class BackendError extends Error {
  constructor(message) { super(message); this.name = 'BackendError'; }
}

const REQUIRED = {
  format: 'str', format_version: 'int', name: 'str', created: 'str', model: 'dict', latent: 'dict',
  transformer: 'dict', guidance: 'dict', sampler: 'dict', rope: 'dict', sizes: 'dict', files: 'dict',
};
const SECTIONS = {
  model: ['config', 'patch_size', 'latent_channels', 'token_dim', 'out_token_dim', 'head_dim', 'num_classes',
    'null_class'],
  transformer: ['file', 'precision', 'opset', 'inputs', 'outputs'],
  rope: ['theta', 'head_dim', 'method', 'decouple', 'ori_max_pe_len', 'online', 'methods'],
  sizes: ['train_token_budget', 'max_tokens', 'default', 'buckets'],
};

const isDict = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isKind = (v, kind) => (kind === 'str' ? typeof v === 'string'
  : kind === 'int' ? Number.isInteger(v) : isDict(v));
/** Python's repr of a JSON value, for messages. */
export function pyRepr(value) {
  if (value === undefined || value === null) return 'None';
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  return String(value);
}

/**
 * Check a manifest object; returns it or throws PackageError.
 * @param {any} doc
 * @param {string} [source]
 */
export function validateManifest(doc, source = MANIFEST_NAME) {
  if (!isDict(doc)) throw new PackageError(`${source}: expected a JSON object, got ${Array.isArray(doc) ? 'list' : typeof doc}`);
  if (doc.format !== FORMAT) {
    throw new PackageError(`${source}: not a FiT model package (format ${pyRepr(doc.format)}, expected '${FORMAT}')`);
  }
  if (doc.format_version !== FORMAT_VERSION) {
    throw new PackageError(`${source}: package format version ${pyRepr(doc.format_version)} is not supported (this `
      + `code reads version ${FORMAT_VERSION}); re-export the package or update fit-toolkit`);
  }
  for (const [key, kind] of Object.entries(REQUIRED)) {
    if (!isKind(doc[key], kind)) throw new PackageError(`${source}: field '${key}' is missing or not a ${kind}`);
  }
  for (const [section, keys] of Object.entries(SECTIONS)) {
    const missing = keys.filter((k) => !(k in doc[section]));
    if (missing.length) throw new PackageError(`${source}: ${section} lacks ${missing.join(', ')}`);
  }
  const transformer = doc.transformer;
  if (!PRECISIONS.includes(transformer.precision)) {
    throw new PackageError(`${source}: unknown transformer precision ${pyRepr(transformer.precision)}`);
  }
  const names = (transformer.inputs || []).map((s) => s?.name);
  const outs = (transformer.outputs || []).map((s) => s?.name);
  if (names.join() !== INPUT_NAMES.join() || outs.join() !== OUTPUT_NAMES.join()) {
    throw new PackageError(`${source}: transformer inputs/outputs (${names.map(pyRepr).join(', ')}) do not follow `
      + `the graph contract (${INPUT_NAMES.map(pyRepr).join(', ')}) -> (${OUTPUT_NAMES.map(pyRepr).join(', ')},)`);
  }
  const vae = doc.vae_decoder;
  if (vae && (vae.inputs?.length || vae.outputs?.length)) {
    const vaeIns = (vae.inputs || []).map((s) => s?.name);
    const vaeOuts = (vae.outputs || []).map((s) => s?.name);
    if (vaeIns.join() !== VAE_INPUT_NAMES.join() || vaeOuts.join() !== VAE_OUTPUT_NAMES.join()) {
      throw new PackageError(`${source}: vae_decoder inputs/outputs (${vaeIns.map(pyRepr).join(', ')}) do not `
        + `follow the VAE decoder contract (${VAE_INPUT_NAMES.map(pyRepr).join(', ')},) -> `
        + `(${VAE_OUTPUT_NAMES.map(pyRepr).join(', ')},)`);
    }
  }
  if (!LATENT_SPACES.includes(doc.latent.space)) {
    throw new PackageError(`${source}: latent.space must be one of ${LATENT_SPACES.join(', ')}`);
  }
  const referenced = [transformer.file, ...(doc.vae_decoder ? [doc.vae_decoder.file] : []),
    transformer.external_data, doc.reference?.weights].filter(Boolean);
  for (const name of referenced) {
    if (!(name in doc.files)) throw new PackageError(`${source}: ${name} is referenced but not listed under files`);
  }
  for (const [name, entry] of Object.entries(doc.files)) {
    if (!isDict(entry) || typeof entry.sha256 !== 'string' || !Number.isInteger(entry.bytes)) {
      throw new PackageError(`${source}: files['${name}'] needs sha256 and bytes`);
    }
    if (name.startsWith('/') || /^[A-Za-z]:/.test(name) || name.split(/[\\/]/).includes('..')) {
      throw new PackageError(`${source}: file name '${name}' must be relative to the package`);
    }
  }
  return doc;
}

/** Precisions a transformer variant's weights can be stored in (engines/manifest.py VARIANT_PRECISIONS). */
export const VARIANT_PRECISIONS = ['fp32', 'fp16', 'int8'];

/**
 * The transformer graphs of a package: `transformer.file` (named by its precision), then `transformer.variants`.
 * @param {any} transformer the manifest's transformer section
 * @returns {{name: string, file: string, precision: string, runtime: string|null, weights_from: string|null}[]}
 */
export function transformerVariants(transformer) {
  const base = { name: transformer.precision, file: transformer.file, precision: transformer.precision, runtime: null,
    weights_from: transformer.external_data ?? null };
  return [base, ...(transformer.variants ?? []).map((v) => ({ runtime: null, weights_from: null, ...v }))];
}

/**
 * The variant `backend` runs for `precision` (a variant name, a precision, or null for the package default), by
 * the rule of docs/package-format.md#variants; `tuned` prefers the copy made for `backend`. PackageError names
 * what the package holds.
 * @param {any} transformer
 * @param {string} backend
 * @param {string|null} [precision]
 * @param {boolean} [tuned]
 */
export function selectVariant(transformer, backend, precision = null, tuned = true) {
  const all = transformerVariants(transformer);
  const find = (name) => {
    const found = all.find((v) => v.name === name);
    if (!found) {
      throw new PackageError(`the package has no transformer variant ${pyRepr(name)}; it holds `
        + `${all.map((v) => v.name).join(', ')}`);
    }
    return found;
  };
  const runnable = all.filter((v) => v.runtime === null || v.runtime === backend);
  let wanted = precision;
  if (wanted === null || wanted === undefined) {
    let chosen = find(transformer.default_variant ?? transformer.precision);
    if (chosen.runtime !== null && chosen.runtime !== backend && all[0].precision === chosen.precision) chosen = all[0];
    wanted = chosen.precision;
    if (chosen.runtime === backend && tuned) return chosen;
  } else if (all.some((v) => v.name === wanted) && !VARIANT_PRECISIONS.includes(wanted)) {
    const chosen = find(wanted);
    if (chosen.runtime !== null && chosen.runtime !== backend) {
      throw new PackageError(`transformer variant ${pyRepr(wanted)} runs on ${chosen.runtime} only, not ${backend}`);
    }
    return chosen;
  }
  const matching = runnable.filter((v) => v.precision === wanted);
  if (!matching.length) {
    throw new PackageError(`the package has no ${wanted} transformer that ${backend} can run; it holds `
      + `${all.map((v) => v.name).join(', ')}`);
  }
  const own = matching.filter((v) => v.runtime === backend);
  const generic = matching.filter((v) => v.runtime === null);
  return (tuned && own.length ? own : generic.length ? generic : own)[0];
}
