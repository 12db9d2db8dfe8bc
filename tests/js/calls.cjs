// Shared by the postgrest-js scripts: await each call in order (one at a time) and print one
// JSON object with, for each, what postgrest-js gave back (data, error, count, status).
async function printCalls (calls) {
  const out = {}
  for (const [name, call] of Object.entries(calls)) {
    const { data, error, count, status } = await call
    out[name] = { data, error, count, status }
  }
  process.stdout.write(JSON.stringify(out))
}

function run (makeCalls) {
  Promise.resolve().then(() => printCalls(makeCalls(process.argv.slice(2))))
    .catch((err) => { console.error(err); process.exit(1) })
}

module.exports = { run }
