/**
 * Python-compatible text: generation parameters as PNG text (docs/runtime-spec.md §10) and the values quoted in
 * messages, written as Python's repr, str, json.dumps and format(x, 'g') write them, and text read as a number as
 * Python's int() and float() read it. The one place for this in js/.
 * @module params
 */

/** A float the way Python's repr writes it: shortest round-trip digits, `.0` on whole numbers. */
export function pyFloat(x) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, e] = x.toExponential().split('e');
  const power = Number(e);
  if (power < -4 || power >= 16) {
    return `${mantissa}e${power < 0 ? '-' : '+'}${String(Math.abs(power)).padStart(2, '0')}`;
  }
  const text = x.toFixed(Math.max(0, mantissa.replace('-', '').replace('.', '').length - 1 - power));
  return text.includes('.') ? text : `${text}.0`;
}

/** Python's `format(x, 'g')`: 6 significant digits, exponent form outside 1e-4 .. 1e6. */
export function formatG(x) {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const [mantissa, e] = x.toExponential(5).split('e');
  const power = Number(e);
  const digits = mantissa.replace(/\.?0+$/, '');
  if (power < -4 || power >= 6) return `${digits}e${power < 0 ? '-' : '+'}${String(Math.abs(power)).padStart(2, '0')}`;
  return String(Number(x.toPrecision(6)));
}

/** @typedef {{float: number}} PyFloat a number that is written as a Python float */

/** Mark a number as a float for {@link pyJson}. */
export const asFloat = (x) => ({ float: x });

const isFloat = (value) => value !== null && typeof value === 'object' && !Array.isArray(value) && 'float' in value;

function reprNumber(value) {
  return Number.isInteger(value) ? String(value) : pyFloat(value);
}

function scalar(value) {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') return String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (isFloat(value)) return pyFloat(value.float);
  throw new TypeError(`cannot write ${typeof value}`);
}

function jsonString(text) {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (code < 0x20 || code > 0x7e) {
      for (let i = 0; i < ch.length; i++) out += `\\u${ch.charCodeAt(i).toString(16).padStart(4, '0')}`;
    } else out += ch;
  }
  return `${out}"`;
}

/** JSON as Python's json.dumps(value, sort_keys=sortKeys) writes it. */
export function pyJson(value, sortKeys = true) {
  if (typeof value === 'string') return jsonString(value);
  if (Array.isArray(value)) return `[${value.map((v) => pyJson(v, sortKeys)).join(', ')}]`;
  if (value && typeof value === 'object' && !isFloat(value)) {
    const keys = sortKeys ? Object.keys(value).sort() : Object.keys(value);
    return `{${keys.map((k) => `${jsonString(k)}: ${pyJson(value[k], sortKeys)}`).join(', ')}}`;
  }
  return scalar(value);
}

/** Plain JSON-able copy (floats as numbers, big seeds as strings when unsafe). */
export function plain(value) {
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  if (value && typeof value === 'object') {
    if ('float' in value) return value.float;
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

/** Python's repr of a string: single quotes unless it holds one and no double quote; backslashes escaped. */
function reprString(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const escapes = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', [quote]: `\\${quote}` };
  return `${quote}${[...text].map((ch) => escapes[ch] ?? ch).join('')}${quote}`;
}

/**
 * Python's repr of a value for messages: numbers as ints or floats ({float} always a float), strings quoted, lists
 * and dicts as Python writes them.
 */
export function pyRepr(value) {
  if (value === null || value === undefined) return 'None';
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value === 'string') return reprString(value);
  if (typeof value === 'number') return reprNumber(value);
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(', ')}]`;
  if (typeof value === 'object' && !isFloat(value)) {
    return `{${Object.entries(value).map(([k, v]) => `${reprString(k)}: ${pyRepr(v)}`).join(', ')}}`;
  }
  return scalar(value);
}

/** Python's repr of a tuple of values: `('a', 'b')`, `('a',)`. */
export function pyTuple(values) {
  return `(${values.map(pyRepr).join(', ')}${values.length === 1 ? ',' : ''})`;
}

/** Python's str() of a value (strings as they are, everything else as {@link pyRepr}). */
export function pyStr(value) {
  return typeof value === 'string' ? value : pyRepr(value);
}

/** Python's type name of a JSON value (`dict`, `list`, `str`, `int`, `float`, `bool`, `NoneType`), for messages. */
export function pyTypeName(value) {
  if (value === null || value === undefined) return 'NoneType';
  if (Array.isArray(value)) return 'list';
  if (typeof value === 'string') return 'str';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'bigint' || Number.isInteger(value)) return 'int';
  return typeof value === 'number' ? 'float' : 'dict';
}

const DIGITS = String.raw`\d(?:_?\d)*`;
const INT_TEXT = new RegExp(`^[-+]?${DIGITS}$`);
const FLOAT_TEXT = new RegExp(`^[-+]?(?:${DIGITS}\\.?(?:${DIGITS})?|\\.${DIGITS})(?:[eE][-+]?${DIGITS})?$`);
const SPECIAL_FLOAT = /^([-+]?)(inf|infinity|nan)$/i;

/**
 * A request value given as text (a flag, a query field) the way Python front ends hand it on: text that Python's
 * int() reads is that whole number when `kind` is "int" (a BigInt beyond 2**53), text that float() reads a
 * {float}, anything else the text itself; the engine's checks then word every mistake.
 * @param {string} text
 * @param {'int'|'float'} [kind]
 * @returns {number|bigint|PyFloat|string}
 */
export function pyNumber(text, kind = 'float') {
  const t = text.trim();
  if (kind === 'int' && INT_TEXT.test(t)) {
    const value = BigInt(t.replaceAll('_', ''));
    return Number.isSafeInteger(Number(value)) ? Number(value) : value;
  }
  if (FLOAT_TEXT.test(t)) return asFloat(Number(t.replaceAll('_', '')));
  const special = SPECIAL_FLOAT.exec(t);
  if (special) return asFloat(special[2].toLowerCase() === 'nan' ? NaN : special[1] === '-' ? -Infinity : Infinity);
  return text;
}
