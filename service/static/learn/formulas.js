// Per-entry formulas with the numbers plugged in, one template per quantity (TEMPLATES below).
//
// A template never computes the value it explains: the result it shows is the server's number for that entry,
// and every plugged-in term is read from an array the server returned (or the request the learner sent). What a
// template adds is only the formula's shape: which terms, in which order.
//
// Indices are logical: a per-example array (Z, A, dZ, dA, X, Y, dropout masks) is indexed (unit, example)
// whatever the layout, W and dW (row, column), b and db (unit). ctx.lab() writes an entry's name in the request's
// own layout, e.g. "dZ2[0,2]" (features first) or "dZ2[2,0]" (examples first).

const MAX_TERMS = 6;  // a longer sum shows its first terms and how many more there are

// Which template explains an array, from its name. Returns {kind, layer} or null.
export function classify(name, L) {
  let m;
  if (name === 'X') return {kind: 'input', layer: 0};
  if (name === 'Y') return {kind: 'input', layer: L};
  if (name === 'AL') return {kind: 'A', layer: L};
  if ((m = /^g_prime_Z(\d+)$/.exec(name))) return {kind: 'g_prime', layer: +m[1]};
  if ((m = /^dZ(\d+)_chain_rule$/.exec(name))) return {kind: 'chain_rule', layer: +m[1]};
  if ((m = /^A(\d+)_minus_Y$/.exec(name))) return {kind: 'A_minus_Y', layer: +m[1]};
  if (name === 'jacobian_example_0') return {kind: 'jacobian', layer: L};
  if ((m = /^D(\d+)$/.exec(name))) return {kind: 'input', layer: +m[1]};
  if ((m = /^Z(\d+)$/.exec(name))) return {kind: 'Z', layer: +m[1]};
  if ((m = /^A(\d+)$/.exec(name))) return {kind: 'A', layer: +m[1]};
  if ((m = /^dA(\d+)$/.exec(name))) return {kind: +m[1] === L ? 'dA_output' : 'dA_hidden', layer: +m[1]};
  if ((m = /^dZ(\d+)$/.exec(name))) return {kind: +m[1] === L ? 'dZ_output' : 'dZ_hidden', layer: +m[1]};
  if ((m = /^dW(\d+)$/.exec(name))) return {kind: 'dW', layer: +m[1]};
  if ((m = /^db(\d+)$/.exec(name))) return {kind: 'db', layer: +m[1]};
  if ((m = /^d([A-Za-z]+)(\d+)$/.exec(name))) return {kind: 'gradient', layer: +m[2]};
  if ((m = /^([A-Za-z]+)(\d+)$/.exec(name))) return {kind: 'input', layer: +m[2]};
  return null;
}

// The name of A_{l}: the input is X.
const A = l => (l === 0 ? 'X' : `A${l}`);

// A number as a factor: negative numbers in parentheses.
function par(ctx, v) {
  const s = ctx.f(v);
  return v !== null && v < 0 ? `(${s})` : s;
}

// A sum of terms, each {sym, num}; long sums cut to their first MAX_TERMS terms.
function sum(terms) {
  const shown = terms.length > MAX_TERMS ? terms.slice(0, MAX_TERMS) : terms;
  const more = terms.length - shown.length;
  const tail = more ? ` + ... (${more} more terms)` : '';
  return {sym: shown.map(t => t.sym).join(' + ') + tail, num: shown.map(t => t.num).join(' + ') + tail,
          n: terms.length};
}

// g(z), the activation, with its number: by activation name.
const FORWARD = {
  sigmoid: (z, zs) => ({sym: `sigmoid(${z})`, num: `1 / (1 + exp(-${zs}))`}),
  tanh: (z, zs) => ({sym: `tanh(${z})`, num: `tanh(${zs})`}),
  relu: (z, zs) => ({sym: `max(${z}, 0)`, num: `max(${zs}, 0)`}),
  linear: (z, zs) => ({sym: z, num: zs}),
};

// g'(z) for an elementwise activation, in terms of the numbers the server returned: A when A_l is the plain
// activation (no dropout mask on it), else Z. Returns {sym, num, note?}.
function derivative(ctx, l, u, e) {
  const layer = ctx.layer(l);
  const Zn = ctx.lab(`Z${l}`, u, e), z = ctx.at(`Z${l}`, u, e);
  const An = ctx.lab(A(l), u, e), a = ctx.at(A(l), u, e);
  const plainA = !layer.masked && a !== undefined;
  switch (layer.activation) {
    case 'sigmoid':
      return plainA ? {sym: `${An}·(1 - ${An})`, num: `${ctx.f(a)}·(1 - ${ctx.f(a)})`}
                    : {sym: `sigmoid'(${Zn})`, num: `sigmoid'(${ctx.f(z)})`};
    case 'tanh':
      return plainA ? {sym: `(1 - ${An}^2)`, num: `(1 - ${par(ctx, a)}^2)`}
                    : {sym: `tanh'(${Zn})`, num: `tanh'(${ctx.f(z)})`};
    case 'relu':
      return {sym: `relu'(${Zn})`, num: z > 0 ? '1' : '0', note: `${Zn} = ${ctx.f(z)} ${z > 0 ? '> 0' : '<= 0'}`};
    case 'leaky_relu':
      return {sym: `leaky_relu'(${Zn})`, num: z > 0 ? '1' : ctx.f(layer.slope),
              note: `${Zn} = ${ctx.f(z)} ${z > 0 ? '> 0' : `<= 0, slope s = ${ctx.f(layer.slope)}`}`};
    case 'linear':
      return {sym: `linear'(${Zn})`, num: '1'};
    default:
      return {sym: `g'(${Zn})`, num: `g'(${ctx.f(z)})`};
  }
}

// The softmax vector-Jacobian product dZ_k = a_k (dA_k - sum_j dA_j a_j), for unit u of example e.
function softmaxVjp(ctx, l, u, e, dAname) {
  const n = ctx.units(l);
  const terms = [];
  for (let j = 0; j < n; j++) {
    terms.push({sym: `${ctx.lab(dAname, j, e)}·${ctx.lab(A(l), j, e)}`,
                num: `${par(ctx, ctx.at(dAname, j, e))}·${par(ctx, ctx.at(A(l), j, e))}`});
  }
  const s = sum(terms);
  return {sym: `${ctx.lab(A(l), u, e)}·(${ctx.lab(dAname, u, e)} - (${s.sym}))`,
          num: `${par(ctx, ctx.at(A(l), u, e))}·(${ctx.f(ctx.at(dAname, u, e))} - (${s.num}))`};
}

// The "(1/m)·" of a per-example quantity under the `mean` convention, and its number.
const perM = ctx => (ctx.mean ? {sym: '(1/m)·', num: `(1/${ctx.m})·`} : {sym: '', num: ''});

// dA_L from the cost's formula, by cost name: terms a (A_L's entry) and y (Y's), as {sym, num} pairs.
const COST_DA = {
  binary_cross_entropy: (a, y) => ({sym: `-(${y.sym}/${a.sym} - (1 - ${y.sym})/(1 - ${a.sym}))`,
                                    num: `-(${y.num}/${a.num} - (1 - ${y.num})/(1 - ${a.num}))`}),
  categorical_cross_entropy: (a, y) => ({sym: `-${y.sym}/${a.sym}`, num: `-${y.num}/${a.num}`}),
  mean_squared_error: (a, y) => ({sym: `${a.sym} - ${y.sym}`, num: `${a.num} - ${y.num}`}),
};

// The templates: quantity -> (ctx, name, idx) => {sym, num, note?} or null when it does not apply. idx is
// [unit, example] for per-example arrays, [row, column] for W-shaped ones, [unit] for b-shaped ones.
export const TEMPLATES = {
  input(ctx, name) {
    return {note: `${name} is part of your request: edit it and the service recomputes everything downstream`};
  },

  Z(ctx, name, [u, e], l) {
    const layer = ctx.layer(l);
    if (!layer.dense) return null;
    const terms = [];
    for (let j = 0; j < ctx.units(l - 1); j++) {
      terms.push({sym: `${ctx.lab(`W${l}`, u, j)}·${ctx.lab(A(l - 1), j, e)}`,
                  num: `${par(ctx, ctx.at(`W${l}`, u, j))}·${par(ctx, ctx.at(A(l - 1), j, e))}`});
    }
    const s = sum(terms);
    const b = ctx.at(`b${l}`, u);
    return {sym: `${s.sym} + ${ctx.lab(`b${l}`, u)}`, num: `${s.num} + ${par(ctx, b)}`,
            note: `unit ${u}, example ${e}: W${l}'s ${ctx.weightsInOut ? 'column' : 'row'} ${u} against example ${e} of ` +
                  `${A(l - 1)}, plus b${l}'s entry ${u}`};
  },

  A(ctx, name, [u, e], l) {
    const layer = ctx.layer(l);
    if (!layer.dense || !layer.activation) return null;
    const Zn = ctx.lab(`Z${l}`, u, e), z = ctx.f(ctx.at(`Z${l}`, u, e));
    let g;
    if (layer.activation === 'softmax') {
      const terms = [];
      for (let j = 0; j < ctx.units(l); j++) {
        terms.push({sym: `exp(${ctx.lab(`Z${l}`, j, e)})`, num: `exp(${ctx.f(ctx.at(`Z${l}`, j, e))})`});
      }
      const s = sum(terms);
      g = {sym: `exp(${Zn}) / (${s.sym})`, num: `exp(${z}) / (${s.num})`};
    } else if (layer.activation === 'leaky_relu') {
      const zv = ctx.at(`Z${l}`, u, e);
      g = {sym: `leaky_relu(${Zn})`, num: zv > 0 ? z : `${ctx.f(layer.slope)}·${par(ctx, zv)}`};
    } else if (FORWARD[layer.activation]) {
      g = FORWARD[layer.activation](Zn, z);
    } else {
      g = {sym: `${layer.activation}(${Zn})`, num: `${layer.activation}(${z})`};
    }
    if (layer.masked) {
      const D = ctx.lab(`D${l}`, u, e);
      return {sym: `${g.sym}·${D}/p`, num: `${g.num}·${ctx.f(ctx.at(`D${l}`, u, e))}/${ctx.f(ctx.keepProb)}`,
              note: 'inverted dropout: the mask D, scaled by 1/keep_prob'};
    }
    return g;
  },

  dA_output(ctx, name, [u, e], l) {
    const make = COST_DA[ctx.cost];
    if (!make) return null;
    const a = {sym: ctx.lab(A(l), u, e), num: ctx.f(ctx.at(A(l), u, e))};
    const y = ctx.label(u, e);
    const f = make(a, y), pre = perM(ctx);
    const av = ctx.at(A(l), u, e);
    const edge = ctx.cost !== 'mean_squared_error' && (av === 0 || av === 1)
      ? `. A${l} rounds to exactly ${av} in float64, so the formula as written divides by zero; the service ` +
        `evaluates it from Z${l} (e.g. 1/(1 - a) = 1 + exp(z)), finite whenever the true value is`
      : '';
    return {sym: pre.sym + (pre.sym ? `(${f.sym})` : f.sym), num: pre.num + (pre.num ? `(${f.num})` : f.num),
            note: `from the cost's own formula (${ctx.cost}): no weights, only A${l} and Y` + edge};
  },

  dZ_output(ctx, name, [u, e], l) {
    const pre = perM(ctx);
    if (ctx.canonical) {
      const a = ctx.f(ctx.at(A(l), u, e)), y = ctx.label(u, e);
      const sym = `${ctx.lab(A(l), u, e)} - ${y.sym}`, num = `${a} - ${y.num}`;
      return {sym: pre.sym ? `${pre.sym}(${sym})` : sym, num: pre.num ? `${pre.num}(${num})` : num,
              note: `${ctx.layer(l).activation} + ${ctx.cost} is a canonical pair: dA${l}·g'(Z${l}) collapses ` +
                    `to A${l} - Y`};
    }
    return chainRule(ctx, name, [u, e], l, null);
  },

  dA_hidden(ctx, name, [j, e], l) {
    if (!ctx.layer(l + 1).dense) return null;
    const terms = [];
    for (let k = 0; k < ctx.units(l + 1); k++) {
      terms.push({sym: `${ctx.lab(`W${l + 1}`, k, j)}·${ctx.lab(`dZ${l + 1}`, k, e)}`,
                  num: `${par(ctx, ctx.at(`W${l + 1}`, k, j))}·${par(ctx, ctx.at(`dZ${l + 1}`, k, e))}`});
    }
    const s = sum(terms);
    const line = ctx.weightsInOut ? 'row' : 'column';
    const note = `(W${l + 1}^T dZ${l + 1}) at unit ${j}, example ${e}: ${line} ${j} of W${l + 1} against example ${e} ` +
                 `of dZ${l + 1}. No cost formula, only what flows back through the weights`;
    if (l >= 1 && ctx.layer(l).masked) {
      const D = ctx.lab(`D${l}`, j, e);
      return {sym: `(${s.sym})·${D}/p`, num: `(${s.num})·${ctx.f(ctx.at(`D${l}`, j, e))}/${ctx.f(ctx.keepProb)}`,
              note: note + '; times the dropout mask over keep_prob'};
    }
    return {sym: s.sym, num: s.num, note};
  },

  dZ_hidden(ctx, name, [u, e], l) {
    const layer = ctx.layer(l);
    if (!layer.dense || layer.activation === 'softmax') return null;
    const g = derivative(ctx, l, u, e);
    const dA = ctx.lab(`dA${l}`, u, e);
    return {sym: `${dA}·${g.sym}`, num: `${par(ctx, ctx.at(`dA${l}`, u, e))}·${g.num}`,
            note: [`the elementwise chain rule with ${layer.activation}'`, g.note].filter(Boolean).join('; ')};
  },

  dW(ctx, name, [r, c], l) {
    if (!ctx.layer(l).dense) return null;
    const terms = [];
    for (let e = 0; e < ctx.m; e++) {
      terms.push({sym: `${ctx.lab(`dZ${l}`, r, e)}·${ctx.lab(A(l - 1), c, e)}`,
                  num: `${par(ctx, ctx.at(`dZ${l}`, r, e))}·${par(ctx, ctx.at(A(l - 1), c, e))}`});
    }
    const s = sum(terms);
    let sym = ctx.mean ? s.sym : `(1/m)·(${s.sym})`, num = ctx.mean ? s.num : `(1/${ctx.m})·(${s.num})`;
    if (ctx.l2) {
      sym += ` + (lambda/m)·${ctx.lab(`W${l}`, r, c)}`;
      num += ` + (${ctx.f(ctx.l2)}/${ctx.m})·${par(ctx, ctx.at(`W${l}`, r, c))}`;
    }
    return {sym, num, note: `a sum over the ${ctx.m} examples of dZ${l} times ${A(l - 1)}` +
            (ctx.mean ? ' (no 1/m here: under the mean convention dZ already carries it)' : '')};
  },

  db(ctx, name, [k], l) {
    if (!ctx.layer(l).dense) return null;
    const terms = [];
    for (let e = 0; e < ctx.m; e++) {
      terms.push({sym: ctx.lab(`dZ${l}`, k, e), num: par(ctx, ctx.at(`dZ${l}`, k, e))});
    }
    const s = sum(terms);
    return ctx.mean ? {sym: s.sym, num: s.num}
                    : {sym: `(1/m)·(${s.sym})`, num: `(1/${ctx.m})·(${s.num})`};
  },

  g_prime(ctx, name, [u, e], l) {
    if (ctx.layer(l).activation === 'softmax') return null;
    return derivative(ctx, l, u, e);
  },

  chain_rule(ctx, name, idx, l) {
    return chainRule(ctx, name, idx, l, `g_prime_Z${l}`);
  },

  A_minus_Y(ctx, name, [u, e], l) {
    const y = ctx.label(u, e), pre = perM(ctx);
    const sym = `${ctx.lab(A(l), u, e)} - ${y.sym}`, num = `${ctx.f(ctx.at(A(l), u, e))} - ${y.num}`;
    return {sym: pre.sym ? `${pre.sym}(${sym})` : sym, num: pre.num ? `${pre.num}(${num})` : num,
            note: `the shortcut, which is not dZ${l} for this pair: compare with dZ${l}`};
  },

  jacobian(ctx, name, [k, j], l) {
    const ak = ctx.at(A(l), k, 0), aj = ctx.at(A(l), j, 0);
    return {sym: `${ctx.lab(A(l), k, 0)}·(${k === j ? 1 : 0} - ${ctx.lab(A(l), j, 0)})`,
            num: `${ctx.f(ak)}·(${k === j ? 1 : 0} - ${ctx.f(aj)})`,
            note: 'softmax couples the units of one example: da_k/dz_j = a_k (delta_kj - a_j), example 0'};
  },
};

// dZ = dA * g'(Z) at the output layer (softmax: the vector-Jacobian product). gName: an array of g'(Z) values
// the server sent (explain's), else the derivative is written from A or Z.
function chainRule(ctx, name, [u, e], l, gName) {
  const layer = ctx.layer(l);
  const dAname = `dA${l}`, dA = ctx.at(dAname, u, e);
  if (layer.activation === 'softmax') {
    const v = softmaxVjp(ctx, l, u, e, dAname);
    return {...v, note: 'softmax: the vector-Jacobian product over the units of this example'};
  }
  const g = derivative(ctx, l, u, e);
  const gv = gName ? ctx.at(gName, u, e) : undefined;
  const viaG = gv !== undefined;  // the server's g'(Z) values: write the factor as g'(Z) and plug them in
  return {sym: `${ctx.lab(dAname, u, e)}·${viaG ? `g'(${ctx.lab(`Z${l}`, u, e)})` : g.sym}`,
          num: `${par(ctx, dA)}·${viaG ? par(ctx, gv) : g.num}`,
          note: [`the chain rule: the cost's factor dA${l} times the activation's factor g'(Z${l})`, g.note,
                 dA === null ? `dA${l} is not representable here (A${l} rounds to 0 or 1)` : null]
                .filter(Boolean).join('; ')};
}

// The formula of one entry as text, "lhs = sym = num = value", and its note. value: the server's number.
export function explainEntry(ctx, name, idx, value) {
  const lhs = ctx.labRaw(name, idx);
  const c = classify(name, ctx.L);
  const tpl = c && TEMPLATES[c.kind];
  let out = null;
  if (tpl) {
    try {
      out = tpl(ctx, name, ctx.logical(name, idx), c.layer);
    } catch (err) {
      out = null;  // a term the template needs is not in this response (a layer kind it does not know)
    }
  }
  const result = ctx.f(value);
  if (!out || !out.sym) {
    const generic = ctx.generic(name);
    return {text: `${lhs} = ${result}`, note: out?.note || generic ||
            'the service\'s value; this page has no per-entry formula for this quantity'};
  }
  const parts = [lhs, out.sym];
  if (out.num !== out.sym && out.num !== result) parts.push(out.num);
  parts.push(result);
  return {text: parts.join(' = '), note: out.note || ''};
}
