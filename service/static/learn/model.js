// The page's view of one computed network: the request the learner sent, the /v1/gradients response (with
// caches) and the /v1/explain story, every array under its course name (X, Y, W1, b1, Z1, A1, dW1, dgamma2, ...),
// with the index and layout rules the formulas need. Nothing here computes a number of the network.

import {shapeOfValue} from './arrays.js';

const PER_EXAMPLE = /^(X|Y|AL|loss|D\d+|Z\d+|A\d+|dZ\d+|dA\d+|g_prime_Z\d+|dZ\d+_chain_rule|A\d+_minus_Y)$/;

const isMatrix = v => Array.isArray(v) && v.length > 0 && Array.isArray(v[0]);
const shapeOf = shapeOfValue;

// Gradient keys grouped by layer number, from L down to 0: [[l, [keys]]]; within a layer dA, dZ, then the
// parameters' gradients in the response's order. Keys with no layer number come last, as layer null.
export function keyOrder(gradients, L) {
  const groups = new Map();
  const rest = [];
  for (const key of Object.keys(gradients)) {
    const m = /^d([A-Za-z_]*?)(\d+)$/.exec(key);
    if (!m) { rest.push(key); continue; }
    const l = Number(m[2]);
    if (!groups.has(l)) groups.set(l, []);
    groups.get(l).push(key);
  }
  const rank = k => (/^dA\d/.test(k) ? 0 : /^dZ\d/.test(k) ? 1 : 2);
  const out = [...groups.entries()].sort((a, b) => b[0] - a[0])
    .map(([l, keys]) => [l, keys.sort((a, b) => rank(a) - rank(b))]);
  if (rest.length) out.push([null, rest]);
  return out;
}

// The arrays a problem's located errors point at: "layers[1].W[0][2]" -> {name: "W2", idx: [0, 2]}.
export function problemTargets(errors) {
  const out = [];
  for (const {location} of errors) {
    let m;
    const idx = s => [...s.matchAll(/\[(\d+)\]/g)].map(x => Number(x[1]));
    if ((m = /^layers\[(\d+)\]\.(\w+)((?:\[\d+\])*)$/.exec(location))) out.push({name: `${m[2]}${+m[1] + 1}`, idx: idx(m[3])});
    else if ((m = /^(X|Y)((?:\[\d+\])*)$/.exec(location))) out.push({name: m[1], idx: idx(m[2])});
    else if ((m = /^dropout\.masks\[(\d+)\]((?:\[\d+\])*)$/.exec(location))) out.push({name: `D${+m[1] + 1}`, idx: idx(m[2])});
  }
  return out;
}

export function model(body, response, explain, info) {
  const L = body.layers.length;
  const ef = body.layout === 'examples_first';
  // weight_layout in_out holds W (and dW) as (inputs, units): the logical [unit, input] is the sent [input, unit].
  const wio = body.weight_layout === 'in_out';
  const flipped = name => wio && /^d?W\d+$/.test(name);
  const values = new Map();
  const paths = new Map();
  values.set('X', body.X); paths.set('X', ['X']);
  values.set('Y', body.Y); paths.set('Y', ['Y']);
  const layers = body.layers.map((spec, i) => {
    const l = i + 1, type = spec.type || 'dense';
    const params = Object.keys(spec).filter(k => Array.isArray(spec[k]));
    for (const p of params) { values.set(`${p}${l}`, spec[p]); paths.set(`${p}${l}`, ['layers', i, p]); }
    const masked = !!(body.dropout?.masks?.[i]) && l < L;
    if (masked) { values.set(`D${l}`, body.dropout.masks[i]); paths.set(`D${l}`, ['dropout', 'masks', i]); }
    return {l, type, dense: type === 'dense', activation: spec.activation, slope: spec.negative_slope ?? 0.01,
            masked, params};
  });
  for (const [k, v] of Object.entries(response.caches || {})) values.set(k, v);
  values.set('AL', response.AL);
  for (const [k, v] of Object.entries(response.gradients)) values.set(k, v);
  const explained = new Map();
  for (const step of explain?.steps || []) {
    for (const [k, v] of Object.entries(step.values)) if (!explained.has(k)) explained.set(k, v);
  }
  const value = name => values.get(name);
  const explainValue = name => explained.get(name);
  const any = name => (values.has(name) ? values.get(name) : explained.get(name));
  // An image batch (m, C, H, W) or (m, H, W, C) has its examples first whatever `layout` says.
  const imageLayout = shapeOf(body.X).length === 4 ? (body.image_layout || 'NCHW') : null;
  const m = ef || imageLayout ? body.X.length : body.X[0].length;
  const cost = body.cost;
  const costInfo = info.costs.find(c => c.name === cost);

  function kindOf(name, v = any(name)) {
    if (PER_EXAMPLE.test(name)) return 'pe';
    if (/^d?W\d+$/.test(name) || name === 'jacobian_example_0') return 'w';
    if (/^d?b\d+$/.test(name)) return 'b';
    const base = /^d([A-Za-z]+\d+)$/.exec(name);
    const ref = base && values.has(base[1]) ? values.get(base[1]) : v;
    const s = shapeOf(ref);
    return s.length === 1 || (s.length === 2 && s[1] === 1) ? 'b' : s.length === 2 ? 'w' : 'other';
  }
  const units = l => {
    if (l === 0) return ef ? body.X[0].length : body.X.length;
    const Z = values.get(`Z${l}`) || values.get(`A${l}`);
    if (Z) return ef ? Z[0].length : Z.length;
    return (values.get(`W${l}`) || []).length;
  };
  // Whether dZ_L = A_L - Y: the explain route says so; without its story, the cost's fused activation (/v1).
  const canonical = explain ? !!explain.canonical : costInfo?.fused_activation === layers[L - 1].activation;
  const classIndices = cost === 'categorical_cross_entropy' && !isMatrix(body.Y) && units(L) > 1;

  // An entry by logical index: (unit, example) for per-example arrays, (row, column) for W, (unit) for b.
  function at(name, i, j) {
    const v = any(name);
    if (v === undefined || v === null) return v;
    const kind = kindOf(name, v);
    if (kind === 'pe') return isMatrix(v) ? (ef ? v[j]?.[i] : v[i]?.[j]) : v[j];
    if (kind === 'b') return Array.isArray(v[i]) ? v[i][0] : v[i];
    if (flipped(name) && isMatrix(v)) return v[j]?.[i];
    return isMatrix(v) ? v[i]?.[j] : Array.isArray(v) ? v[i] : v;
  }
  function lab(name, i, j) {
    const v = any(name);
    const kind = kindOf(name, v);
    if (kind === 'pe') return isMatrix(v) ? `${name}[${ef ? `${j},${i}` : `${i},${j}`}]` : `${name}[${j}]`;
    if (kind === 'b') return isMatrix(v) ? `${name}[${i},0]` : `${name}[${i}]`;
    if (j !== undefined && flipped(name)) return `${name}[${j},${i}]`;
    return j === undefined ? `${name}[${i}]` : `${name}[${i},${j}]`;
  }
  function logical(name, idx) {
    const kind = kindOf(name);
    if (kind === 'pe') return idx.length === 2 ? (ef ? [idx[1], idx[0]] : idx) : [0, idx[0]];
    if (kind === 'b') return [idx[0]];
    if (flipped(name) && idx.length === 2) return [idx[1], idx[0]];
    return idx;
  }

  function context(f) {
    return {
      L, m, cost, layout: body.layout || 'features_first', canonical, weightsInOut: wio,
      mean: body.intermediates === 'mean', l2: body.l2 || 0, keepProb: body.dropout?.keep_prob, f,
      layer: l => layers[l - 1] || {dense: false, activation: null, masked: false},
      units, at, lab, logical,
      labRaw: (name, idx) => (idx.length ? `${name}[${idx.join(',')}]` : name),
      label: (u, e) => {
        if (isMatrix(body.Y)) return {sym: lab('Y', u, e), num: f(at('Y', u, e))};
        if (classIndices) return {sym: `[Y[${e}] = ${u}]`, num: body.Y[e] === u ? '1' : '0'};
        return {sym: `Y[${e}]`, num: f(body.Y[e])};
      },
      generic: name => genericNote(name),
    };
  }
  function genericNote(name) {
    const g = /^d([A-Za-z]+)(\d+)$/.exec(name);
    if (g) return `dJ/d${g[1]}${g[2]}: the service's gradient of the cost with respect to ${g[1]}${g[2]}`;
    if (name === 'J') return 'the cost: ' + (costInfo?.formula || cost);
    if (name === 'loss') return 'each example\'s loss; J is their mean (plus the L2 term)';
    return '';
  }

  function axesText(name, v = any(name)) {
    const rank = shapeOf(v).length;
    if (rank === 4 && /^d?W\d+$/.test(name)) return imageLayout === 'NHWC' ? '(kh × kw × C × F)' : '(F × C × kh × kw)';
    if (rank === 4 && PER_EXAMPLE.test(name)) return imageLayout === 'NHWC' ? '(m × H × W × C)' : '(m × C × H × W)';
    if (rank > 2) return '';
    const kind = kindOf(name, v);
    if (kind === 'pe') {
      if (!isMatrix(v)) return name === 'Y' && classIndices ? '(a class index per example)' : '(one per example)';
      return ef ? '(examples × units)' : '(units × examples)';
    }
    if (kind === 'w') return name === 'jacobian_example_0' ? '(units × units, example 0)'
                             : flipped(name) ? '(inputs × units)' : '(units × inputs)';
    if (kind === 'b') return '(one per unit)';
    return '';
  }

  function optionsText() {
    const parts = [`layout: ${body.layout || 'features_first'}`, `intermediates: ${body.intermediates || 'per_example'}`];
    if (imageLayout) parts.splice(1, 0, `image_layout: ${imageLayout}`);
    if (wio) parts.splice(1, 0, 'weight_layout: in_out');
    if (body.l2) parts.push(`L2 lambda = ${body.l2}`);
    if (body.dropout) parts.push(`dropout keep_prob = ${body.dropout.keep_prob} on the hidden layers`);
    return parts.join(' · ');
  }

  function costFormula() {
    return costInfo ? `${costInfo.formula}; ${costInfo.dA_formula}.` : '';
  }

  function backwardText(l) {
    const pre = body.intermediates === 'mean' ? '' : '(1/m) ';
    if (l === null) return 'Other gradients the service returned.';
    if (l === 0) return 'dA0 = W1^T dZ1 (the hidden rule, applied to the input).';
    const layer = layers[l - 1];
    if (!layer?.dense) return `The service's gradients of this ${layer?.type} layer.`;
    const dZ = l === L ? (canonical ? `dZ${L} = A${L} - Y (canonical pair)` : `dZ${L} = dA${L} * g'(Z${L})`)
                       : `dA${l} = W${l + 1}^T dZ${l + 1}; dZ${l} = dA${l} * g'(Z${l})`;
    const dA = l === L ? `dA${L} from the cost's formula; ` : '';
    return `${dA}${dZ}; dW${l} = ${pre}dZ${l} A${l - 1}^T${body.l2 ? ` + (lambda/m) W${l}` : ''}; ` +
           `db${l} = ${pre}sum over examples of dZ${l}.`;
  }

  // The canonical pair's dZ_L in short ("A2 - Y", "dA2"), from /v1's costs.
  const fusedText = (costInfo?.fused_formula || 'A{L} - Y').replaceAll('{L}', String(L)).split(' (')[0];
  return {L, m, cost, layers, examplesFirst: ef, weightsInOut: wio, imageLayout, fusedText, value, explainValue, kindOf, units, axesText, optionsText,
          costFormula, backwardText, context, pathOf: name => paths.get(name),
          shape: name => shapeOf(any(name))};
}
