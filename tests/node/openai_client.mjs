// The official OpenAI Node client against troupe's gateway (run by
// tests/integration/gateway_openai_test.cc with a cluster it started):
//   node openai_client.mjs BASE_URL KEY RATE_LIMITED_KEY MODEL
// KEY may call MODEL without limits; RATE_LIMITED_KEY has 30 requests a minute. Exits 0 when
// every check passed, else 1 with the failed check on stderr. Bounded: at most ~50 requests.
import OpenAI from 'openai';

const [baseURL, key, limitedKey, model] = process.argv.slice(2);
if (!model) {
  console.error('usage: node openai_client.mjs BASE_URL KEY RATE_LIMITED_KEY MODEL');
  process.exit(2);
}
const checks = [];
function check(name, ok, detail = '') {
  checks.push(name);
  if (!ok) {
    console.error(`FAILED: ${name} ${detail}`);
    process.exit(1);
  }
  console.log(`ok: ${name}`);
}

const client = new OpenAI({ apiKey: key, baseURL: `${baseURL}/v1`, maxRetries: 0, timeout: 20000 });

// A completion.
const completion = await client.completions.create({ model, prompt: 'once upon a time', max_tokens: 4 });
check('completion has text and usage', completion.choices[0].text.length > 0 && completion.usage.completion_tokens === 4,
      JSON.stringify(completion));

// A chat completion, not streamed.
const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hello' }], max_tokens: 3 });
check('chat completion', chat.choices[0].message.role === 'assistant' && chat.usage.completion_tokens === 3,
      JSON.stringify(chat));

// A streamed chat completion: chunks arrive one by one, then the stream ends ([DONE]).
const stream = await client.chat.completions.create({
  model, messages: [{ role: 'user', content: 'hello there' }], max_tokens: 5, stream: true,
  stream_options: { include_usage: true },
});
let text = '';
let chunks = 0;
let usage = null;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.choices.length > 0 && chunk.choices[0].delta.content) text += chunk.choices[0].delta.content;
  if (chunk.usage) usage = chunk.usage;
}
check('streamed chat completion arrives in chunks', chunks >= 5 && text.split(' ').filter(Boolean).length === 5,
      `chunks ${chunks} text '${text}'`);
check('streamed usage when asked', usage !== null && usage.completion_tokens === 5, JSON.stringify(usage));

// The models this key may call.
const models = [];
for await (const m of client.models.list()) models.push(m.id);
check('models list has the deployment', models.includes(model), JSON.stringify(models));

// An invalid key: 401, the client's AuthenticationError.
try {
  await new OpenAI({ apiKey: 'tk-AAAAAAAAAAAA-wrong', baseURL: `${baseURL}/v1`, maxRetries: 0 })
      .chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 });
  check('invalid key refused', false, 'it was accepted');
} catch (e) {
  check('invalid key refused with 401', e instanceof OpenAI.AuthenticationError && e.status === 401, String(e));
}

// A limit hit: 30 requests a minute is a burst of 30, then one every 2 s. The 31st is refused
// with 429 and Retry-After; a client that retries (the OpenAI client honours Retry-After)
// gets through once the bucket has refilled.
const limited = new OpenAI({ apiKey: limitedKey, baseURL: `${baseURL}/v1`, maxRetries: 0, timeout: 20000 });
let refused = null;
for (let i = 0; i < 40 && refused === null; i += 1) {
  try {
    await limited.completions.create({ model, prompt: 'x', max_tokens: 1 });
  } catch (e) {
    refused = e;
  }
}
check('the limit refuses with 429', refused instanceof OpenAI.RateLimitError && refused.status === 429, String(refused));
const retryAfter = Number(refused.headers['retry-after']);
check('429 carries Retry-After', retryAfter >= 1 && retryAfter <= 60, `retry-after ${refused.headers['retry-after']}`);
const patient = new OpenAI({ apiKey: limitedKey, baseURL: `${baseURL}/v1`, maxRetries: 3, timeout: 20000 });
const t0 = Date.now();
const after = await patient.completions.create({ model, prompt: 'x', max_tokens: 1 });
const waited = Date.now() - t0;
check('a retrying client gets through after Retry-After', after.choices.length === 1 && waited >= 500,
      `waited ${waited} ms`);
console.log(`all ${checks.length} checks passed`);
