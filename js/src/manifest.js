/**
 * The model package manifest (engines/manifest.py): manifest.json read against the schema generated from the Python
 * dataclasses (manifest-schema.js) with their defaults, checks and one-line PackageError messages, and the
 * transformer variant a runtime runs.
 * @module manifest
 */

import { GraphContract, PRECISIONS, TensorSpec, VaeDecoderContract } from './contract.js';
import { PackageError } from './errors.js';
import { SCHEMA } from './manifest-schema.js';
import { pyFloat, pyJson, pyRepr, pyTypeName } from './params.js';

export const {
  FORMAT, FORMAT_VERSION, MANIFEST_NAME, VARIANT_PRECISIONS, ORT_VARIANT, LATENT_SPACES,
} = SCHEMA.constants;

// ------------------------------------------------------------------------------------------------------------
// Manifest sections
// ------------------------------------------------------------------------------------------------------------

const JSON_TYPES = {
  int: Number.isInteger, float: (v) => typeof v === 'number', str: (v) => typeof v === 'string',
  bool: (v) => typeof v === 'boolean', dict: (v) => pyTypeName(v) === 'dict',
};

/** A JSON value checked against a schema field (engines.manifest._checked). */
function checked(value, field, where) {
  if (value === null) {
    if (field.nullable) return null;
    throw new PackageError(`${where} must not be null`);
  }
  if (field.type === 'list') {
    if (!Array.isArray(value)) throw new PackageError(`${where}: expected a list, got ${pyTypeName(value)}`);
    return value;
  }
  const check = JSON_TYPES[field.type];
  if (check && !check(value)) {
    throw new PackageError(`${where}: expected ${field.type}, got ${pyJson(value, false).slice(0, 40)}`);
  }
  return value;
}

/** The section class of the entries of a list or dict field (its `items` or `values` in the schema). */
function memberOf(section, name) {
  const field = SCHEMA.sections[section].find((f) => f.name === name);
  return field.items ?? field.values;
}

/**
 * Section `name` of the schema read from `data`: every field checked, defaults filled in, nested sections read
 * (engines.manifest._Section.from_dict), then the section's own checks. Unknown fields are ignored.
 */
function readSection(name, data, source) {
  data = BEFORE[name]?.(data) ?? data;
  if (pyTypeName(data) !== 'dict') throw new PackageError(`${source}: expected an object, got ${pyTypeName(data)}`);
  const values = {};
  for (const field of SCHEMA.sections[name]) {
    const where = `${source}.${field.name}`;
    if (!Object.hasOwn(data, field.name) || (data[field.name] === null && !field.required)) {
      if (field.required) throw new PackageError(`${source} lacks ${field.name}`);
      values[field.name] = structuredClone(field.default);
      continue;
    }
    let value = data[field.name];
    if (field.items === TensorSpec.name) {
      if (!Array.isArray(value)) throw new PackageError(`${where}: expected a list of tensors`);
      value = value.map((tensor) => TensorSpec.fromDict(tensor, where));
    } else if (value !== null && Object.hasOwn(SCHEMA.sections, field.type)) {
      value = readSection(field.type, value, where);
    }
    values[field.name] = checked(value, field, where);
  }
  CHECKS[name]?.(values, source);
  return values;
}

/** What a section does to its data before reading (the from_dict overrides of engines/manifest.py). */
const BEFORE = {
  TransformerSection(data) {
    // Packages written before variants name the ONNX Runtime-tuned copy `ort_optimized`: it is the variant `ort`.
    if (pyTypeName(data) !== 'dict' || !data.ort_optimized) return data;
    const legacy = { ...data.ort_optimized, name: ORT_VARIANT,
      precision: Object.hasOwn(data, 'precision') ? data.precision : 'fp32', weights_from: data.external_data ?? null };
    return { ...data, variants: [legacy, ...(data.variants || [])] };
  },
};

/** Each section's checks once its fields are read (the __post_init__ of its dataclass). */
const CHECKS = {
  ModelSection(m) {
    if (m.class_names !== null && m.class_names.length !== m.num_classes) {
      throw new PackageError(`model.class_names has ${m.class_names.length} names for ${m.num_classes} classes`);
    }
  },
  LatentSection(l) {
    if (!LATENT_SPACES.includes(l.space)) {
      throw new PackageError(`latent.space must be one of ${LATENT_SPACES.join(', ')}, got ${pyRepr(l.space)}`);
    }
    if (l.downsample < 1 || l.pixel_granularity < 1 || l.pixel_granularity % l.downsample) {
      throw new PackageError(`latent.pixel_granularity (${l.pixel_granularity}) must be a positive multiple of `
        + `latent.downsample (${l.downsample})`);
    }
  },
  VariantSection(v) {
    if (!VARIANT_PRECISIONS.includes(v.precision)) {
      throw new PackageError(`variant ${pyRepr(v.name)}: unknown precision ${pyRepr(v.precision)}; choose one of `
        + `${VARIANT_PRECISIONS.join(', ')}`);
    }
  },
  TransformerSection(t) {
    if (!PRECISIONS.includes(t.precision)) {
      throw new PackageError(`unknown transformer precision ${pyRepr(t.precision)}`);
    }
    const section = memberOf('TransformerSection', 'variants');
    t.variants = t.variants.map((v) => readSection(section, v, 'transformer.variants'));
    const names = allVariants(t).map((v) => v.name);
    if (new Set(names).size !== names.length) {
      throw new PackageError(`transformer.variants: names must be unique, got ${pyRepr(names)}`);
    }
    if (t.default_variant !== null && !names.includes(t.default_variant)) {
      throw new PackageError(`transformer.default_variant ${pyRepr(t.default_variant)} is not a variant `
        + `(${names.join(', ')})`);
    }
  },
  GuidanceSection(g) {
    if (!(g.default_scale >= 0)) {
      throw new PackageError(`guidance.default_scale must be >= 0, got ${pyFloat(g.default_scale)}`);
    }
  },
  SamplerSection(s) {
    if (s.steps < 1) throw new PackageError(`sampler.steps must be >= 1, got ${s.steps}`);
    if (!(s.time_shift >= 0.01 && s.time_shift <= 100)) { // sampler.js MIN_TIME_SHIFT, MAX_TIME_SHIFT
      throw new PackageError(`sampler.time_shift must be a number from 0.01 to 100, got ${pyFloat(s.time_shift)}`);
    }
    if (!(s.tail_compression >= 0 && s.tail_compression <= 1)) { // sampler.js MAX_TAIL_COMPRESSION
      throw new PackageError('sampler.tail_compression must be a number from 0 to 1, got '
        + `${pyFloat(s.tail_compression)}`);
    }
  },
  SizesSection(s, source) {
    if (s.default.length !== 2 || !s.default.every((v) => Number.isInteger(v) && v > 0)) {
      throw new PackageError(`sizes.default must be [width, height], got ${pyRepr(s.default)}`);
    }
    if (s.max_tokens < 1) throw new PackageError(`sizes.max_tokens must be positive, got ${s.max_tokens}`);
    s.buckets = s.buckets.map((b) => readSection(memberOf('SizesSection', 'buckets'), b, `${source}.buckets`));
  },
};

/**
 * The transformer graphs of a package (a transformer section's variants): `transformer.file` as the variant named
 * by its precision (any runtime, external data `transformer.external_data`), then every listed variant.
 */
export function allVariants(transformer) {
  const { precision, file, opset, external_data: weightsFrom } = transformer;
  const base = readSection('VariantSection', { name: precision, file, precision, opset, weights_from: weightsFrom },
    'transformer');
  return [base, ...transformer.variants];
}

/** The transformer variant named `name`; PackageError naming what the package holds. */
export function variant(transformer, name) {
  const all = allVariants(transformer);
  const found = all.find((v) => v.name === name);
  if (!found) {
    throw new PackageError(`the package has no transformer variant ${pyRepr(name)}; it holds `
      + `${all.map((v) => v.name).join(', ')}`);
  }
  return found;
}

/**
 * The variant `backend` runs for `precision`: a variant name, a precision (`fp32`, `fp16`, `int8`), or null for the
 * package default. Among the variants of a precision the backend prefers the one made for it (`runtime` equal to
 * its name: the ONNX Runtime-tuned copy) unless `tuned` is false; a variant made for another runtime is never
 * chosen (docs/package-format.md#variants). `fp16`: the device computes in float16 natively (a WebGPU adapter with
 * `shader-f16`), so with no precision asked for an fp32 default gives way to an fp16 variant the backend may run.
 * PackageError names what the package holds.
 * @param {object} transformer the manifest's transformer section
 * @param {string} backend
 * @param {string|null} [precision]
 * @param {boolean} [tuned]
 * @param {boolean} [fp16]
 */
export function select(transformer, backend, precision = null, tuned = true, fp16 = false) {
  const all = allVariants(transformer);
  const runnable = all.filter((v) => v.runtime === null || v.runtime === backend);
  const names = all.map((v) => v.name).join(', ');
  let wanted = precision;
  if (wanted === null) {
    let chosen = variant(transformer, transformer.default_variant || transformer.precision);
    if (chosen.runtime !== null && chosen.runtime !== backend && all[0].precision === chosen.precision) chosen = all[0];
    wanted = chosen.precision;
    if (fp16 && wanted === 'fp32' && runnable.some((v) => v.precision === 'fp16')) wanted = 'fp16';
    else if (chosen.runtime === backend && tuned) return chosen;
  } else if (!VARIANT_PRECISIONS.includes(wanted)) {       // a variant name (an unknown one is refused by name)
    const chosen = variant(transformer, wanted);
    if (chosen.runtime !== null && chosen.runtime !== backend) {
      throw new PackageError(`transformer variant ${pyRepr(wanted)} runs on ${chosen.runtime} only, not ${backend}`);
    }
    return chosen;
  }
  const matching = runnable.filter((v) => v.precision === wanted);
  if (!matching.length) {
    throw new PackageError(`the package has no ${wanted} transformer that ${backend} can run; it holds ${names}`);
  }
  const own = matching.filter((v) => v.runtime === backend);
  const generic = matching.filter((v) => v.runtime === null);
  return (tuned && own.length ? own : generic.length ? generic : own)[0];
}

// ------------------------------------------------------------------------------------------------------------
// The manifest
// ------------------------------------------------------------------------------------------------------------

/** A package's manifest.json, read and checked: its sections as plain objects with every default filled in. */
export class Manifest {
  /** @private Use {@link Manifest.fromDict}. The checks across sections (Manifest.__post_init__). */
  constructor(values) {
    Object.assign(this, values);
    const files = {};
    for (const [name, entry] of Object.entries(this.files)) {
      if (name.startsWith('/') || /^[A-Za-z]:/.test(name) || name.split(/[\\/]/).includes('..')) {
        throw new PackageError(`file name ${pyRepr(name)} must be relative to the package`);
      }
      files[name] = readSection(memberOf('Manifest', 'files'), entry, `files[${pyRepr(name)}]`);
    }
    this.files = files;
    GraphContract.checkNames(this.transformer.inputs.map((s) => s.name), this.transformer.outputs.map((s) => s.name),
      'transformer');
    const vae = this.vae_decoder;
    if (vae && (vae.inputs.length || vae.outputs.length)) {
      VaeDecoderContract.checkNames(vae.inputs.map((s) => s.name), vae.outputs.map((s) => s.name), 'vae_decoder');
    }
    for (const name of this.referencedFiles()) {
      if (!Object.hasOwn(files, name)) throw new PackageError(`${name} is referenced but not listed under files`);
    }
  }

  /** The transformer's graph contract. */
  get graph() {
    const m = this.model;
    return new GraphContract(m.token_dim, m.out_token_dim, m.head_dim, this.transformer.precision);
  }

  /** The VAE decoder's graph contract, or null for a package without one. */
  get vaeGraph() {
    return this.vae_decoder ? new VaeDecoderContract(this.model.latent_channels, this.latent.downsample) : null;
  }

  /** Every file a section names (graphs, their external data, stored weights). */
  referencedFiles() {
    const t = this.transformer;
    const names = [t.file, t.external_data,
      ...t.variants.flatMap((v) => [v.file, v.weights_from, v.ort_format, v.operator_config]),
      this.vae_decoder ? this.vae_decoder.file : null, this.reference.weights];
    return names.filter(Boolean);
  }

  /**
   * Read and check a manifest object (the parsed manifest.json); PackageError with a one-line message naming
   * `source` otherwise.
   * @param {any} data
   * @param {string} [source]
   * @returns {Manifest}
   */
  static fromDict(data, source = MANIFEST_NAME) {
    if (pyTypeName(data) !== 'dict') {
      throw new PackageError(`${source}: expected a JSON object, got ${pyTypeName(data)}`);
    }
    if (data.format !== FORMAT) {
      throw new PackageError(`${source}: not a FiT model package (format ${pyRepr(data.format)}, expected `
        + `${pyRepr(FORMAT)})`);
    }
    if (data.format_version !== FORMAT_VERSION) {
      throw new PackageError(`${source}: package format version ${pyRepr(data.format_version)} is not supported (this `
        + `code reads version ${FORMAT_VERSION}); re-export the package or update fit-toolkit`);
    }
    try {
      return new Manifest(readSection(SCHEMA.root, data, 'manifest'));
    } catch (err) {
      if (err instanceof PackageError) throw new PackageError(`${source}: ${err.message}`);
      throw err;
    }
  }
}

/** A graph file plus the file its external data comes from (`external_data` / a variant's `weights_from`). */
export function graphFiles(manifest, file) {
  const extra = allVariants(manifest.transformer).find((v) => v.file === file)?.weights_from ?? null;
  return [file, ...(extra && extra !== file ? [extra] : [])];
}
