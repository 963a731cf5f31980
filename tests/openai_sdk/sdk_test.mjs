// The official OpenAI Node SDK drives a real local cluster (a worker and a router started here): completions and
// chat, unary and streaming, n > 1, stop sequences, logprobs, structured output, and each error class.
// Usage: WORKER=... ROUTER=... MODEL=... node --test sdk_test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import OpenAI from 'openai';

const { WORKER, ROUTER, MODEL } = process.env;
if (!WORKER || !ROUTER || !MODEL) throw new Error('set WORKER, ROUTER and MODEL (see tests/CMakeLists.txt)');

const dir = mkdtempSync(join(tmpdir(), 'gemma-openai-sdk-'));
const children = [];

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function waitForFile(path, seconds) {
  for (let i = 0; i < seconds * 10; i++) {
    if (existsSync(path)) {
      const text = readFileSync(path, 'utf8').trim();
      if (text) return Number(text);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${path} never appeared`);
}

function start(binary, args) {
  const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  children.push(child);
  return child;
}

// A worker and a router with keys, a small queue, and the OpenAI API.
async function cluster(name, routerFlags) {
  const workerPortFile = join(dir, `${name}.worker`);
  const worker = start(WORKER, [`--model=${MODEL}`, `--port_file=${workerPortFile}`, '--threads=1', '--kv_cache_mb=32']);
  const workerPort = await waitForFile(workerPortFile, 30);
  const http = await freePort();
  const routerPortFile = join(dir, `${name}.router`);
  start(ROUTER, ['--plaintext', '--bind_host=127.0.0.1', `--workers=127.0.0.1:${workerPort}`,
    `--port_file=${routerPortFile}`, `--http_port=${http}`, '--served_model_name=gemma-tiny', ...routerFlags]);
  await waitForFile(routerPortFile, 30);
  return { worker, baseURL: `http://127.0.0.1:${http}/v1` };
}

let main;
let client;
const model = 'gemma-tiny';

before(async () => {
  writeFileSync(join(dir, 'keys'), 'sk-test\n');
  main = await cluster('main', [`--api_keys_file=${join(dir, 'keys')}`]);
  client = new OpenAI({ apiKey: 'sk-test', baseURL: main.baseURL, maxRetries: 0 });
});

after(() => { for (const c of children) c.kill('SIGKILL'); });

test('completions: unary and streaming give the same text', async () => {
  const params = { model, prompt: 'Once upon a time', max_tokens: 12, temperature: 0.7, seed: 11 };
  const unary = await client.completions.create(params);
  assert.equal(unary.object, 'text_completion');
  assert.equal(unary.choices.length, 1);
  assert.equal(unary.usage.completion_tokens, 12);
  assert.equal(unary.choices[0].finish_reason, 'length');
  let text = '';
  let chunks = 0;
  for await (const chunk of await client.completions.create({ ...params, stream: true })) {
    if (chunk.choices[0]?.finish_reason == null) chunks++;
    text += chunk.choices[0]?.text ?? '';
  }
  assert.equal(text, unary.choices[0].text);
  assert.equal(chunks, 12, 'one chunk per token');
});

test('chat: unary and streaming, with usage and logprobs', async () => {
  const params = { model, messages: [{ role: 'user', content: 'Say something' }], max_tokens: 8, temperature: 0,
    logprobs: true, top_logprobs: 3 };
  const unary = await client.chat.completions.create(params);
  assert.equal(unary.object, 'chat.completion');
  assert.equal(unary.choices[0].message.role, 'assistant');
  assert.equal(unary.choices[0].logprobs.content.length, unary.usage.completion_tokens);
  assert.equal(unary.choices[0].logprobs.content[0].top_logprobs.length, 3);
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    text += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.equal(text, unary.choices[0].message.content);
  assert.deepEqual(usage, unary.usage);
});

test('n > 1 and stop sequences', async () => {
  const many = await client.completions.create({ model, prompt: 'abc', max_tokens: 6, temperature: 1, seed: 5, n: 3 });
  assert.deepEqual(many.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(new Set(many.choices.map((c) => c.text)).size > 1, true, 'seeded choices differ');
  const plain = await client.completions.create({ model, prompt: 'abc', max_tokens: 16, temperature: 0 });
  const text = plain.choices[0].text;
  const stop = text.slice(3, 5);
  const stopped = await client.completions.create({ model, prompt: 'abc', max_tokens: 16, temperature: 0, stop: [stop] });
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  assert.equal(stopped.choices[0].text, text.slice(0, text.indexOf(stop)));
});

test('structured output: json_schema outputs parse and validate', async () => {
  const schema = {
    type: 'object',
    properties: { name: { type: 'string', maxLength: 10 }, count: { type: 'integer' }, tags: { type: 'array',
      items: { enum: ['a', 'b', 'c'] }, minItems: 1, maxItems: 3 } },
    required: ['name', 'count', 'tags'],
    additionalProperties: false,
  };
  const reply = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'JSON please' }],
    max_tokens: 300, temperature: 1, seed: 21, n: 5,
    response_format: { type: 'json_schema', json_schema: { name: 'thing', schema, strict: true } } });
  assert.equal(reply.choices.length, 5);
  for (const choice of reply.choices) {
    assert.equal(choice.finish_reason, 'stop', choice.message.content);
    const value = JSON.parse(choice.message.content);
    assert.deepEqual(Object.keys(value).sort(), ['count', 'name', 'tags']);
    assert.equal(typeof value.name, 'string');
    assert.ok([...value.name].length <= 10);
    assert.ok(Number.isInteger(value.count));
    assert.ok(value.tags.length >= 1 && value.tags.length <= 3 && value.tags.every((t) => ['a', 'b', 'c'].includes(t)));
  }
  await assert.rejects(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }],
    response_format: { type: 'json_schema', json_schema: { name: 'p', schema: { type: 'string', pattern: 'a+' } } } }),
  (e) => e instanceof OpenAI.BadRequestError && /pattern/.test(e.message));
});

test('models lists the served model', async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [model]);
});

test('errors: 400 names the field, 401, 404', async () => {
  await assert.rejects(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], temperature: 9 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature');
  await assert.rejects(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }],
    tools: [{ type: 'function', function: { name: 'f' } }] }),
  (e) => e instanceof OpenAI.BadRequestError && e.param === 'tools');
  const stranger = new OpenAI({ apiKey: 'sk-wrong', baseURL: main.baseURL, maxRetries: 0 });
  await assert.rejects(stranger.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  await assert.rejects(client.completions.create({ model: 'gpt-4', prompt: 'x' }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found');
});

test('errors: 429 when the queue is full', async () => {
  const small = await cluster('small', ['--max_queued=2', '--max_batch_size=1']);
  const busy = new OpenAI({ apiKey: 'none', baseURL: small.baseURL, maxRetries: 0 });
  const calls = Array.from({ length: 10 }, () =>
    busy.completions.create({ model, prompt: 'queue', max_tokens: 48, temperature: 0 }).then(() => 200, (e) => e.status));
  const statuses = await Promise.all(calls);
  assert.ok(statuses.includes(200), statuses.join());
  assert.ok(statuses.includes(429), statuses.join());
  assert.ok(statuses.every((s) => s === 200 || s === 429), statuses.join());
  small.worker.kill('SIGKILL');
});

test('errors: 503 with no healthy group', async () => {
  main.worker.kill('SIGKILL');
  let status = 0;
  for (let i = 0; i < 100 && status !== 503; i++) {
    status = await client.completions.create({ model, prompt: 'x', max_tokens: 2 }).then(() => 200, (e) => e.status);
    if (status !== 503) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(status, 503);
});
