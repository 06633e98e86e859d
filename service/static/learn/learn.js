// The learner page: a network's forward and backward pass with the learner's numbers, the explain route's story
// of the last layer next to a hidden layer's, every entry's formula with its numbers, edits that recompute
// through the API, and grading of the learner's own arrays. Every number shown is the service's (or the
// learner's own input); the page computes none. Everything it fetches is on this origin.

import {el, grid, parseSubmission, renderArray, shapeText} from './arrays.js';
import {explainEntry} from './formulas.js';
import {model, keyOrder, problemTargets} from './model.js';
import {decodeState, encodeState} from './state.js';

const $ = sel => document.querySelector(sel);
const KEY_STORE = 'gradient-service-api-key';
const GRADE_ONLY = ['submission', 'submissions', 'reveal', 'rtol', 'atol', 'points', 'shape_policy', 'format',
                    'hidden_layer', 'examples_shown', 'units_shown'];

const S = {
  info: null, examples: [], exampleName: null, exampleBody: null,
  body: null, response: null, explain: null, model: null, previous: null,
  digits: 4, hidden: null, selection: null, lastEdit: null, generation: 0, mathCache: new Map(),
};

// --- the API --------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, body) {
  const headers = {Accept: 'application/json'};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {method: body === undefined ? 'GET' : 'POST', headers,
                                 body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// --- numbers --------------------------------------------------------------------------------------------

export function fmt(v) {
  if (v === null) return 'null';
  if (v === undefined) return '?';
  if (typeof v !== 'number') return String(v);
  if (S.digits >= 17 || (Number.isInteger(v) && Math.abs(v) < 1e6)) return String(v);
  const s = v.toPrecision(S.digits);
  return s.includes('e') ? s.replace(/\.?0+e/, 'e') : s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

// --- loading and computing ------------------------------------------------------------------------------

function setStatus(text) {
  $('#status').textContent = text;
}

function setState(state) {
  document.documentElement.dataset.state = state;
}

let latest = 0;  // only the newest computation is shown: an older answer arriving late is dropped

async function compute(body, {edit = null, exampleName = null} = {}) {
  const ticket = ++latest;
  setState('loading');
  setStatus('Computing…');
  const explainBody = {...body};
  delete explainBody.include_caches;
  const L = body.layers?.length || 0;
  const hidden = S.hidden && S.hidden < L ? S.hidden : null;
  if (hidden) explainBody.hidden_layer = hidden;
  try {
    // The story is a second request: when it fails alone, the passes are still shown with its problem.
    const [response, story] = await Promise.all([
      api('/v1/gradients', {...body, include_caches: true}),
      api('/v1/explain', explainBody).then(v => ({v}), err => ({err}))]);
    if (ticket !== latest) return false;
    const explain = story.v || null;
    S.explainError = story.err || null;
    S.previous = S.model && edit ? S.model : null;
    S.body = body;
    S.response = response;
    S.explain = explain;
    S.hidden = explain?.hidden_layer || null;
    S.lastEdit = edit;
    if (exampleName !== null) S.exampleName = exampleName;
    S.model = model(body, response, explain, S.info);
    $('#problems').replaceChildren();
    renderAll();
    S.generation += 1;
    document.documentElement.dataset.generation = String(S.generation);
    setStatus(edit ? `Recomputed by the service after ${editName(edit)} changed; ` +
                     `${countChanges()} numbers changed (marked).` : `Computed by the service: J = ${fmt(response.cost)}.`);
    setState('ready');
    await writeHash();
    return true;
  } catch (err) {
    if (ticket !== latest) return false;
    showProblem(err, edit);
    setState('error');
    return false;
  }
}

const editName = edit => (edit.idx.length ? `${edit.name}[${edit.idx.join(',')}]` : edit.name);

function countChanges() {
  return [...document.querySelectorAll('td.cell.changed')].length;
}

function showProblem(err, edit = null) {
  const box = $('#problems');
  const problem = err instanceof ApiError ? err.problem : null;
  const items = (problem?.errors || []).map(e => el('li', {}, el('code', {text: e.location}), `: ${e.message}`));
  box.replaceChildren(el('strong', {text: err instanceof ApiError ? `The service refused this (${err.status}): `
                                                                   : 'Something went wrong: '}),
                      document.createTextNode(err.message), items.length ? el('ul', {}, ...items) : null);
  setStatus(edit ? `Not recomputed: the service refused ${editName(edit)} as edited. The numbers ` +
                  'shown are from the last network it accepted.' :
                  'The numbers shown are from the last network the service accepted.');
  const targets = problemTargets(problem?.errors || []);
  if (edit && edit.idx.length) targets.push(edit);  // the refused request differs from the last one by this entry
  for (const {name, idx} of targets) {
    const input = document.querySelector(`figure[data-array="${name}"] input[data-idx="${idx.join(',')}"]`);
    if (input) input.setAttribute('aria-invalid', 'true');
  }
}

// --- rendering ------------------------------------------------------------------------------------------

function renderAll() {
  const focus = document.activeElement;
  // Re-rendering replaces the focused entry: focus its successor (same section, array and index) afterwards.
  const refocus = focus?.closest?.('figure[data-array]') &&
    {name: focus.closest('figure[data-array]').dataset.array, idx: focus.dataset.idx ??
      focus.closest('td')?.dataset.idx, input: focus.tagName === 'INPUT',
     section: focus.closest('.layer, .step')?.id};
  renderExamples();
  renderDiagram();
  renderWhy();
  renderForward();
  renderBackward();
  restoreSelection();
  if (refocus && refocus.idx !== undefined) {
    const within = refocus.section ? `#${refocus.section} ` : '';
    const fig = document.querySelector(`${within}figure[data-array="${refocus.name}"]`);
    const target = fig?.querySelector(`${refocus.input ? 'input' : 'td'}[data-idx="${refocus.idx}"]`);
    target?.focus({preventScroll: true});
  }
}

// One array of the model (or an explain value) drawn, with inspect and edit wired.
function arrayFigure(name, value, {editable = false, caption = '', source = null} = {}) {
  const M = S.model;
  const kind = M.kindOf(name, value);
  const prev = S.previous ? (source === 'explain' ? S.previous.explainValue(name) : S.previous.value(name)) : null;
  const fig = renderArray({
    name, value, column: kind === 'b', editable, prev, fmt,
    caption: caption || M.axesText(name, value),
    inspect: (n, idx, v, node, how) => inspect(n, idx, v, node, how, source),
    edit: onEdit,
    selected: S.selection && S.selection.name === name ? S.selection.idx : null,
  });
  if (S.lastEdit && S.lastEdit.name === name) {
    fig.querySelector(`td[data-idx="${S.lastEdit.idx.join(',')}"]`)?.classList.add('edited');
  }
  return fig;
}

function renderExamples() {
  const select = $('#example');
  const options = S.examples.map(ex => el('option', {value: ex.name, text: exampleLabel(ex)}));
  const edited = !S.exampleName || JSON.stringify(S.body) !== JSON.stringify(S.exampleBody);
  if (edited) options.unshift(el('option', {value: '', text: 'Your network (edited or pasted)'}));
  select.replaceChildren(...options);
  select.value = edited ? '' : S.exampleName;
}

function exampleLabel(ex) {
  const b = ex.body;
  const sizes = [grid(b.X).shape, ...b.layers.map(l => grid(l.W ?? [[]]).shape)];
  const ef = b.layout === 'examples_first';
  const chain = [ef ? sizes[0][1] : sizes[0][0], ...sizes.slice(1).map(s => s[0])].join('-');
  const acts = [...new Set(b.layers.map(l => l.activation))].join('/');
  return `${ex.name.replace(/_/g, ' ')} (${chain}, ${acts}, ${b.cost.replace(/_/g, ' ')})`;
}

function renderDiagram() {
  const M = S.model, info = S.info;
  const items = [el('li', {}, el('strong', {}, el('a', {href: '#fwd-0', text: 'Input X = A0'})),
                    el('span', {class: 'shape', text: M.imageLayout
                      ? `${M.m} images, ${shapeText(M.shape('X').slice(1))} (${M.imageLayout})`
                      : `${M.units(0)} features × ${M.m} examples`}))];
  for (const layer of M.layers) {
    const acts = info.activations.filter(a => !a.output_only || layer.l === M.L).map(a => a.name);
    const select = layer.activation === undefined ? null :
      el('select', {'data-layer': String(layer.l), 'aria-label': `activation of layer ${layer.l}`},
         ...acts.map(a => el('option', {value: a, text: a, selected: a === layer.activation})));
    select?.addEventListener('change', () => changeBody(b => { b.layers[layer.l - 1].activation = select.value; },
                                                        {name: `the activation of layer ${layer.l}`, idx: []}));
    const params = layer.params.map(p => `${p}${layer.l} ${shapeText(M.shape(`${p}${layer.l}`))}`);
    items.push(el('li', {class: layer.l === M.L ? 'out' : ''},
      el('strong', {}, el('a', {href: `#fwd-${layer.l}`, text: `Layer ${layer.l}${layer.l === M.L ? ' (output)' : ''}`})),
      el('span', {class: 'meta', text: layer.type}), select ? el('label', {}, 'activation ', select) : null,
      el('span', {class: 'shape', text: params.join(', ')}),
      el('span', {class: 'shape', text: `A${layer.l}: ${shapeText(M.shape(`A${layer.l}`))}`})));
  }
  const costSelect = el('select', {id: 'cost-select', 'aria-label': 'cost'},
                        ...info.costs.map(c => el('option', {value: c.name, text: c.name, selected: c.name === M.cost})));
  costSelect.addEventListener('change', () => changeBody(b => { b.cost = costSelect.value; },
                                                         {name: 'the cost', idx: []}));
  items.push(el('li', {}, el('strong', {}, el('a', {href: '#fwd-cost', text: 'Cost'})), el('label', {}, costSelect),
                el('span', {class: 'shape', text: `Y ${shapeText(grid(S.body.Y).shape)}`}),
                el('span', {class: 'shape', text: `J = ${fmt(S.response.cost)}`})));
  const opts = M.optionsText();
  $('#diagram').replaceChildren(el('ol', {class: 'net', 'aria-label': 'The network, from the input to the cost'}, ...items),
                                opts ? el('p', {class: 'options', text: opts}) : null);
}

// --- why: the explain route's story, last layer and hidden layer side by side -----------------------------

const LAST_STEPS = ['dAL', 'activation_derivative', 'dZL_chain_rule', 'dZL_fused', 'no_simplification', 'stability'];
const HIDDEN_STEPS = ['hidden_dA', 'hidden_dZ'];

const KNOWN_STEPS = new Set(['cost', 'why', ...LAST_STEPS, ...HIDDEN_STEPS]);

function renderWhy() {
  const ex = S.explain, M = S.model;
  if (!ex) {
    $('#why-answer').textContent = `/v1/explain could not tell this network's story: ${S.explainError?.message}`;
    for (const sel of ['#why-cost', '#why-last .steps', '#why-hidden .steps', '#why-why']) $(sel).replaceChildren();
    return;
  }
  const steps = Object.fromEntries(ex.steps.map(s => [s.id, s]));
  $('#why-answer').textContent = answerText(ex, M);
  $('#why-cost').replaceChildren(...(steps.cost ? [stepCard(steps.cost)] : []));
  const last = LAST_STEPS.filter(id => steps[id]).map(id => stepCard(steps[id]));
  $('#why-last-h').textContent = `The last layer (L = ${ex.layers}): from the cost's formula`;
  $('#why-last .steps').replaceChildren(...last);
  const hidden = HIDDEN_STEPS.filter(id => steps[id]).map(id => stepCard(steps[id]));
  const h = ex.hidden_layer;
  $('#why-hidden-h').textContent = h ? `A hidden layer (l = ${h}): from the layer above`
                                     : 'No hidden layer: the input X obeys the hidden rule';
  $('#why-hidden .steps').replaceChildren(shapesBox(h), ...hidden);
  const select = $('#hidden');
  select.replaceChildren(...Array.from({length: Math.max(0, ex.layers - 1)}, (_, i) =>
    el('option', {value: String(i + 1), text: `layer ${i + 1}`, selected: i + 1 === h})));
  select.disabled = ex.layers < 2;
  // Steps this page does not know yet (new layer kinds, say) are shown after the others, as the route sends them.
  const more = ex.steps.filter(s => !KNOWN_STEPS.has(s.id)).map(stepCard);
  $('#why-why').replaceChildren(...(steps.why ? [stepCard(steps.why)] : []), ...more);
  renderMath();
}

function answerText(ex, M) {
  const L = ex.layers, h = ex.hidden_layer;
  const out = `${ex.output_activation} + ${ex.cost}`;
  const last = ex.canonical
    ? `At the last layer the cost is a formula of A${L} itself, so dA${L} comes from the cost, and for ${out} its ` +
      `factors cancel g'(Z${L}) entry by entry: dZ${L} = dA${L} · g'(Z${L}) = ${M.fusedText}.`
    : `At the last layer dA${L} comes from the cost's formula, but ${out} is not a canonical pair, so dZ${L} = ` +
      `dA${L} · g'(Z${L}) keeps both factors and A${L} - Y would be wrong.`;
  const hid = h ? ` A hidden activation A${h} appears in no formula of the cost: it reaches J only through ` +
                  `Z${h + 1} = W${h + 1} A${h} + b${h + 1}, so dA${h} = W${h + 1}^T dZ${h + 1}, then dZ${h} = dA${h} · g'(Z${h}).`
                : ' This network has no hidden layer; the input gets dA0 = W1^T dZ1 by the hidden rule.';
  const unstable = ex.unstable_count ? ` Here ${ex.unstable_count} entries show where the chain-rule form, ` +
                   `evaluated from the rounded A${L}, breaks down while ${M.fusedText} stays exact.` : '';
  return last + hid + ' One formula cannot serve both: the cost touches only the last layer.' + unstable;
}

function shapesBox(h) {
  const M = S.model;
  const W = `W${h + 1}`, dZ = `dZ${h + 1}`, dA = `dA${h}`;
  const sW = M.shape(W), sdZ = M.shape(dZ), sdA = M.shape(dA);
  if (sW.length !== 2 || sdZ.length !== 2) return null;  // a dense W^T dZ only (a conv's kernel has no such box)
  // W as sent: (units, inputs), or (inputs, units) with weight_layout in_out; transposed where the product needs it.
  const transposed = M.examplesFirst === M.weightsInOut;
  const w = transposed ? `${W}^T (${shapeText([...sW].reverse())})` : `${W} (${shapeText(sW)})`;
  const text = M.examplesFirst
    ? `${dA} (${shapeText(sdA)}) = ${dZ} (${shapeText(sdZ)}) @ ${w}   [examples first]`
    : `${dA} (${shapeText(sdA)}) = ${w} @ ${dZ} (${shapeText(sdZ)})`;
  return el('p', {class: 'shapes', text: `Shapes: ${text}`});
}

function stepCard(step) {
  const card = el('article', {class: 'step', id: `step-${step.id}`, 'aria-labelledby': `step-${step.id}-h`},
                  el('h4', {id: `step-${step.id}-h`, text: step.title}),
                  el('div', {class: 'math', 'data-latex': step.latex}, el('code', {text: step.latex})),
                  el('p', {text: step.text}));
  if (step.id === 'stability') {
    card.append(stabilityTable(step));
    return card;
  }
  const arrays = el('div', {class: 'arrays'});
  const collapse = step.id === 'dZL_fused' || step.id === 'no_simplification' ? collapseTable(step.id) : null;
  for (const [name, value] of Object.entries(step.values)) {
    if (collapse && Array.isArray(value)) continue;  // its entries are in the entry-by-entry table
    if (Array.isArray(value) && value.length && value.every(v => typeof v === 'string')) continue;
    if (Array.isArray(value)) {
      const ext = step.shapes?.[name];
      const cut = ext && ext.total.join() !== ext.shown.join() ? `(first ${shapeText(ext.shown)} of ${shapeText(ext.total)})` : '';
      arrays.append(arrayFigure(name, value, {source: 'explain', caption: cut || S.model.axesText(name, value)}));
    } else {
      card.append(el('p', {class: 'value-line'}, el('code', {text: name}), ` = ${fmt(value)}`));
    }
  }
  if (arrays.childElementCount) card.append(arrays);
  if (collapse) card.append(collapse);
  return card;
}

// Entry by entry: dA_L, g'(Z_L), their product, A_L, Y and A_L - Y side by side (explain's numbers).
function collapseTable(stepId) {
  const M = S.model, L = M.L, ex = S.explain;
  const softmax = M.layers[L - 1].activation === 'softmax';
  const cols = [[`dA${L}`, 'dA'], [`g_prime_Z${L}`, "g'(Z)"],
                [`dZ${L}_chain_rule`, softmax ? 'chain rule (softmax VJP)' : "dA · g'(Z)"],
                [`A${L}`, 'A'], ['Y', 'Y'],
                stepId === 'dZL_fused' ? [`dZ${L}`, `${M.fusedText} = dZ${L}`] : [`A${L}_minus_Y`, 'A - Y (wrong here)']];
  if (stepId === 'no_simplification') cols.push([`dZ${L}`, `dZ${L} (true)`]);
  const present = cols.filter(([n]) => M.explainValue(n) !== undefined);
  const first = M.explainValue(`dZ${L}_chain_rule`);
  if (!first) return null;
  const g = grid(first);
  const table = el('table', {class: 'collapse', role: 'grid'},
    el('caption', {text: `Entry by entry (first ${Math.min(8, g.rows * g.cols)} of the ${shapeText(g.shape)} shown)` +
                         (ex.canonical ? `: the chain rule's product equals ${M.fusedText}` : '')}),
    el('thead', {}, el('tr', {}, el('th', {scope: 'col', text: 'entry'}),
                       ...present.map(([, t]) => el('th', {scope: 'col', text: t})))));
  const body = el('tbody');
  // Example by example: all the units of the first example, then the next (softmax couples them).
  const order = [];
  const [outer, inner] = M.examplesFirst ? [g.rows, g.cols] : [g.cols, g.rows];
  for (let a = 0; a < outer; a++) for (let b = 0; b < inner; b++) order.push(M.examplesFirst ? [a, b] : [b, a]);
  let tab = true;
  for (const [r, c] of order.slice(0, 8)) {
    const idx = g.idx(r, c);
    const tr = el('tr', {}, el('th', {scope: 'row', text: `[${idx.join(',')}]`}));
    for (const [name] of present) {
      const v = grid(M.explainValue(name)).get(r, c);
      const before = S.previous?.explainValue(name);
      const changed = before !== undefined && grid(before).rows === g.rows && !Object.is(grid(before).get(r, c), v);
      tr.append(el('td', {class: `cell${v === null ? ' null' : ''}${changed ? ' changed' : ''}`,
                          'data-name': name, 'data-idx': idx.join(','),
                          'data-value': String(v), tabindex: tab ? '0' : '-1', role: 'gridcell',
                          'aria-label': `${name}[${idx.join(',')}] = ${fmt(v)}`, text: fmt(v)}));
      tab = false;
    }
    body.append(tr);
  }
  table.append(body);
  wireNamedCells(table);
  return el('div', {class: 'scroll'}, table);
}

function wireNamedCells(table) {
  const fire = (td, how) => inspect(td.dataset.name, td.dataset.idx.split(',').map(Number),
                                    td.dataset.value === 'null' ? null : Number(td.dataset.value), td, how, 'explain');
  table.addEventListener('mouseover', ev => { const td = ev.target.closest('td.cell'); if (td) fire(td, 'hover'); });
  table.addEventListener('focusin', ev => { const td = ev.target.closest('td.cell'); if (td) fire(td, 'focus'); });
  table.addEventListener('click', ev => { const td = ev.target.closest('td.cell'); if (td) fire(td, 'pin'); });
  table.addEventListener('keydown', ev => {
    const td = ev.target.closest('td.cell');
    if (!td) return;
    const all = [...table.querySelectorAll('td.cell')], cols = td.parentElement.querySelectorAll('td').length;
    const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols}[ev.key];
    const next = step && all[all.indexOf(td) + step];
    if (next) { ev.preventDefault(); td.tabIndex = -1; next.tabIndex = 0; next.focus(); }
  });
}

function stabilityTable(step) {
  const v = step.values, L = S.model.L;
  if (!v.count) return el('p', {class: 'value-line', text: `Unstable entries: 0.`});
  const rows = (step.entries || []).map((idx, i) => el('tr', {},
    el('th', {scope: 'row', text: `[${idx.join(',')}]`}), el('td', {text: fmt(v.A_L[i])}), el('td', {text: fmt(v.Y[i])}),
    el('td', {class: v.chain_rule_from_A_L[i] === null ? 'null' : '', text: v.chain_rule_from_A_L[i] === null ? 'inf or NaN' : fmt(v.chain_rule_from_A_L[i])}),
    el('td', {text: fmt(v.fused[i])}), el('td', {class: 'reasons', text: v.reasons[i]})));
  return el('div', {class: 'scroll'}, el('table', {class: 'stability'},
    el('caption', {text: `${v.count} entries where the textbook chain rule from the rounded A${L} fails`}),
    el('thead', {}, el('tr', {}, ...['entry', `A${L}`, 'Y', 'chain rule from A', `A${L} - Y (exact)`, 'why']
      .map(t => el('th', {scope: 'col', text: t})))), el('tbody', {}, ...rows)));
}

async function renderMath() {
  const boxes = [...document.querySelectorAll('.math[data-latex]')];
  const todo = [...new Set(boxes.map(b => b.dataset.latex).filter(t => !S.mathCache.has(t)))];
  if (todo.length) {
    try {
      const {mathml} = await api('/learn/mathml', {latex: todo.slice(0, 32)});
      todo.slice(0, 32).forEach((t, i) => S.mathCache.set(t, mathml[i]));
    } catch (err) {
      return;  // the LaTeX source stays on the page
    }
  }
  for (const box of boxes) {
    const node = safeMath(S.mathCache.get(box.dataset.latex));
    if (node) box.replaceChildren(node, el('code', {class: 'sr-only', text: box.dataset.latex}));
  }
}

const MATH_TAGS = new Set(('math mrow mi mn mo ms mtext mspace mfrac msqrt mroot msub msup msubsup munder mover ' +
  'munderover mtable mtr mtd mstyle mpadded mphantom menclose merror semantics annotation mmultiscripts ' +
  'mprescripts none').split(' '));

// The server's MathML, parsed as XML and rebuilt from known MathML elements only (no attribute with a script).
function safeMath(text) {
  if (!text) return null;
  const doc = new DOMParser().parseFromString(text, 'application/xml');
  if (doc.querySelector('parsererror')) return null;
  const copy = node => {
    if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.nodeValue);
    if (node.nodeType !== Node.ELEMENT_NODE || !MATH_TAGS.has(node.localName)) return null;
    const out = document.createElementNS('http://www.w3.org/1998/Math/MathML', node.localName);
    for (const a of node.attributes) if (!/^on|href|src|style/i.test(a.name)) out.setAttribute(a.name, a.value);
    for (const child of node.childNodes) { const c = copy(child); if (c) out.append(c); }
    return out;
  };
  return copy(doc.documentElement);
}

// --- forward and backward, layer by layer -----------------------------------------------------------------

function layerSection(id, title, meta, figures) {
  return el('section', {class: 'layer', id, 'aria-labelledby': `${id}-h`},
            el('h3', {id: `${id}-h`, text: title}), meta ? el('p', {class: 'meta', text: meta}) : null,
            el('div', {class: 'arrays'}, ...figures.filter(Boolean)));
}

function renderForward() {
  const M = S.model, b = S.body;
  const out = [layerSection('fwd-0', 'Input: X = A0', 'Your inputs. Edit any entry.', [arrayFigure('X', b.X, {editable: true})])];
  for (const layer of M.layers) {
    const figs = layer.params.map(p => arrayFigure(`${p}${layer.l}`, b.layers[layer.l - 1][p], {editable: true}));
    if (layer.masked) figs.push(arrayFigure(`D${layer.l}`, b.dropout.masks[layer.l - 1], {editable: true,
                                            caption: `dropout mask, keep_prob ${b.dropout.keep_prob}`}));
    for (const n of [`Z${layer.l}`, `A${layer.l}`]) if (M.value(n) !== undefined) figs.push(arrayFigure(n, M.value(n)));
    const formula = layer.dense ? `Z${layer.l} = W${layer.l} A${layer.l - 1} + b${layer.l};  A${layer.l} = ${layer.activation}(Z${layer.l})`
                                : `a ${layer.type} layer`;
    out.push(layerSection(`fwd-${layer.l}`, [`Layer ${layer.l}: ${layer.type}`, layer.activation].filter(Boolean).join(', '),
                          formula, figs));
  }
  out.push(layerSection('fwd-cost', `Cost: ${M.cost}, J = ${fmt(S.response.cost)}`,
                        M.costFormula() + ' Edit the labels Y.',
                        [arrayFigure('Y', b.Y, {editable: true}), arrayFigure('AL', S.response.AL)]));
  $('#forward-layers').replaceChildren(...out);
}

function renderBackward() {
  const M = S.model, g = S.response.gradients;
  const groups = keyOrder(g, M.L);
  const out = [];
  for (const [l, keys] of groups) {
    const title = l === 0 ? 'Input: dA0, the gradient with respect to X' : `Layer ${l}${l === M.L ? ' (output)' : ''}`;
    out.push(layerSection(`bwd-${l}`, title, M.backwardText(l), keys.map(k => arrayFigure(k, g[k]))));
  }
  $('#backward-layers').replaceChildren(...out);
  const warns = S.response.warnings || [];
  $('#warnings').replaceChildren(...warns.map(w => el('p', {}, el('code', {text: w.location}), `: ${w.message}`)));
}

// --- inspecting an entry --------------------------------------------------------------------------------

function inspect(name, idx, value, node, how, source) {
  const ctx = S.model.context(fmt, source);
  const {text, note} = explainEntry(ctx, name, idx, value);
  $('#insp-text').textContent = text;
  $('#insp-note').textContent = note + (S.digits < 17 && typeof value === 'number' ? ` (exact: ${value})` : '');
  const tip = $('#tip');
  tip.textContent = text;
  tip.hidden = false;
  const rect = node.getBoundingClientRect();
  tip.style.left = `${Math.max(4, Math.min(window.scrollX + rect.left, window.scrollX + innerWidth - tip.offsetWidth - 8))}px`;
  tip.style.top = `${window.scrollY + rect.bottom + 4}px`;
  if (how === 'pin' || how === 'focus') {
    // A heatmap has no input per entry: an editable one is edited from the inspector.
    const form = $('#insp-edit');
    form.hidden = !(node.tagName === 'CANVAS' && source !== 'explain' && S.model.pathOf(name));
    if (!form.hidden) {
      S.heatEdit = {name, idx};
      $('#insp-edit-label').textContent = `${name}[${idx.join(',')}]`;
      $('#insp-edit-input').value = String(value);
    }
    document.querySelectorAll('.cell.selected').forEach(c => c.classList.remove('selected'));
    node.classList.add('selected');
    S.selection = {name, idx, source: source || 'model'};
    writeHash();
  }
}

function restoreSelection() {
  const sel = S.selection;
  if (!sel) return;
  const fig = [...document.querySelectorAll(`figure[data-array="${sel.name}"]`)]
    .find(f => (sel.source === 'explain') === !!f.closest('#why')) ||
    document.querySelector(`figure[data-array="${sel.name}"]`);
  const td = fig?.querySelector(`td[data-idx="${sel.idx.join(',')}"]`) ||
             document.querySelector(`td[data-name="${sel.name}"][data-idx="${sel.idx.join(',')}"]`);
  if (!td) return;
  const value = td.dataset.value === 'null' ? null : Number(td.dataset.value);
  inspect(sel.name, sel.idx, value, td, 'restore', sel.source === 'explain' ? 'explain' : null);
  td.classList.add('selected');
}

document.addEventListener('mouseout', ev => {
  if (!ev.relatedTarget || !ev.relatedTarget.closest?.('td.cell, canvas')) $('#tip').hidden = true;
});
document.addEventListener('focusout', () => { $('#tip').hidden = true; });

// --- editing --------------------------------------------------------------------------------------------

function onEdit(name, idx, text, input) {
  const v = Number(text.trim());
  if (text.trim() === '' || !Number.isFinite(v)) {
    input.setAttribute('aria-invalid', 'true');
    setStatus(`${name}[${idx.join(',')}]: "${text}" is not a number; nothing was sent.`);
    return;
  }
  input.removeAttribute('aria-invalid');
  const path = S.model.pathOf(name);
  if (!path) return;
  const current = idx.reduce((o, i) => o?.[i], path.reduce((o, k) => o[k], S.body));
  if (Object.is(current, v)) return;  // Enter and the change event both commit the same value: send it once
  changeBody(b => {
    let target = path.reduce((o, k) => o[k], b);
    if (!idx.length) return;
    for (const i of idx.slice(0, -1)) target = target[i];
    target[idx[idx.length - 1]] = v;
  }, {name, idx});
}

function changeBody(mutate, edit) {
  const body = structuredClone(S.body);
  mutate(body);
  return compute(body, {edit});
}

// --- the URL --------------------------------------------------------------------------------------------

async function writeHash() {
  const hash = await encodeState({
    example: JSON.stringify(S.body) === JSON.stringify(S.exampleBody) ? S.exampleName : null,
    body: S.body, selection: S.selection, hidden: S.hidden, digits: S.digits});
  if (location.hash !== hash) history.replaceState(null, '', hash);
}

async function loadFromHash() {
  const st = await decodeState(location.hash);
  if (st.digits) { S.digits = st.digits; $('#digits').value = String(st.digits); }
  S.hidden = st.hidden || null;
  S.selection = st.selection || null;
  const byName = Object.fromEntries(S.examples.map(e => [e.name, e.body]));
  let name = st.example && byName[st.example] ? st.example : null;
  if (!st.body && !name) name = byName.two_layer_sigmoid_bce ? 'two_layer_sigmoid_bce' : S.examples[0]?.name;
  S.exampleName = name;
  S.exampleBody = name ? byName[name] : null;
  return compute(st.body || structuredClone(byName[name]), {exampleName: name});
}

// --- check my numbers -----------------------------------------------------------------------------------

async function grade() {
  const out = $('#grade-result');
  let submission;
  try {
    submission = parseSubmission($('#submission').value);
  } catch (err) {
    out.replaceChildren(el('p', {class: 'problem', text: `Could not read your arrays: ${err.message}`}));
    return;
  }
  out.replaceChildren(el('p', {text: 'Grading…'}));
  const body = {...S.body, submission, reveal: true};
  delete body.include_caches;
  try {
    const res = await api('/v1/grade', body);
    out.replaceChildren(gradeTable(res));
  } catch (err) {
    const items = (err.problem?.errors || []).map(e => el('li', {}, el('code', {text: e.location}), `: ${e.message}`));
    out.replaceChildren(el('p', {class: 'problem', text: `The service could not grade this: ${err.message}`}),
                        items.length ? el('ul', {}, ...items) : '');
  }
}

function gradeTable(res) {
  const result = res.result || res;
  const rows = (result.keys || []).map(k => {
    const d = k.diagnosis;
    const worst = k.worst ? `at [${(k.worst.index || []).join(',')}]: yours ${fmt(k.worst.submitted)}, ` +
                            `the service's ${fmt(k.worst.reference)}` : '';
    return el('tr', {'data-key': k.key},
      el('th', {scope: 'row'}, el('code', {text: k.key})),
      el('td', {'data-label': 'status'}, el('span', {class: `badge ${k.status}`, text: k.status.replace(/_/g, ' ')})),
      el('td', {'data-label': 'largest error',
                text: k.max_abs_error === null || k.max_abs_error === undefined ? '' : fmt(k.max_abs_error)}),
      el('td', {'data-label': 'worst entry', text: worst}),
      el('td', {class: 'diagnosis', 'data-label': 'diagnosis'}, ...(d ? [el('code', {text: d.code}), el('br'), d.message] :
                                         [k.status === 'correct' ? 'matches the service' : 'no known mistake fits these numbers']),
         ...(k.notes || []).map(n => el('div', {class: 'note', text: typeof n === 'string' ? n : n.message || ''}))));
  });
  return el('div', {class: 'scroll'}, el('table', {class: 'grades'},
    el('caption', {text: `Score ${result.score} of ${result.max_score}`}),
    el('thead', {}, el('tr', {}, ...['key', 'status', 'largest error', 'worst entry', 'diagnosis']
      .map(t => el('th', {scope: 'col', text: t})))), el('tbody', {}, ...rows)));
}

// --- start ----------------------------------------------------------------------------------------------

async function start() {
  try {
    const listed = await api('/learn/examples');
    S.examples = listed.examples;
    if (listed.api_keys_required && !sessionStorage.getItem(KEY_STORE)) return askForKey('');
    S.info = await api('/v1');
  } catch (err) {
    if (err.status === 401) return askForKey(err.message);
    showProblem(err);
    setState('error');
    return;
  }
  $('#apikey').hidden = true;
  await loadFromHash();
}

function askForKey(why) {
  $('#apikey').hidden = false;
  setStatus(why ? `The service refused the key: ${why}` : 'This service needs an API key.');
  setState('needs-key');
}

function wire() {
  $('#example').addEventListener('change', ev => {
    const ex = S.examples.find(e => e.name === ev.target.value);
    if (!ex) return;
    S.exampleName = ex.name;
    S.exampleBody = ex.body;
    S.selection = null;
    S.hidden = null;
    compute(structuredClone(ex.body), {exampleName: ex.name});
  });
  $('#digits').addEventListener('change', ev => {
    S.digits = Number(ev.target.value);
    renderAll();
    writeHash();
  });
  $('#hidden').addEventListener('change', ev => { S.hidden = Number(ev.target.value); compute(S.body); });
  $('#reset').addEventListener('click', () => {
    if (S.exampleBody) compute(structuredClone(S.exampleBody), {exampleName: S.exampleName});
  });
  $('#share').addEventListener('click', async () => {
    await writeHash();
    try { await navigator.clipboard.writeText(location.href); setStatus('Link copied: it holds this network and the selected entry.'); }
    catch (err) { setStatus('The address bar holds the link to this view: copy it from there.'); }
  });
  $('#load-body').addEventListener('click', () => {
    let body;
    try { body = JSON.parse($('#body-text').value); } catch (err) {
      showProblem(new Error(`the pasted body is not valid JSON: ${err.message}`));
      return;
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) { showProblem(new Error('paste a JSON object')); return; }
    delete body.include_caches;
    // A /v1/grade body: its network is loaded, its submission goes to "Check my numbers".
    if (body.submission) $('#submission').value = JSON.stringify(body.submission, null, 1);
    for (const k of GRADE_ONLY) delete body[k];
    S.selection = null;
    S.hidden = null;
    S.exampleName = null;
    S.exampleBody = null;
    compute(body, {exampleName: null});
  });
  $('#grade').addEventListener('click', grade);
  $('#insp-edit').addEventListener('submit', ev => {
    ev.preventDefault();
    if (S.heatEdit) onEdit(S.heatEdit.name, S.heatEdit.idx, $('#insp-edit-input').value, $('#insp-edit-input'));
  });
  $('#apikey').addEventListener('submit', ev => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORE, $('#apikey-input').value.trim());
    start();
  });
  // The fragment holds the state: an in-page link scrolls to its target instead of replacing it.
  document.addEventListener('click', ev => {
    const a = ev.target.closest?.('a[href^="#"]');
    const target = a && document.getElementById(a.getAttribute('href').slice(1));
    if (!target) return;
    ev.preventDefault();
    if (!target.hasAttribute('tabindex')) target.setAttribute('tabindex', '-1');
    target.scrollIntoView();
    target.focus({preventScroll: true});
  });
  window.addEventListener('hashchange', () => {
    if (/(^|[#&])(example|net)=/.test(location.hash)) loadFromHash();
  });
}

wire();
start();
