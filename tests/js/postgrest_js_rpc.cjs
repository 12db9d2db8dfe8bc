// The real postgrest-js calling functions (/rpc/<name>) of a running sqlite-rest.
// Usage: NODE_PATH=<node_modules> node postgrest_js_rpc.cjs BASE_URL TOKEN
// Prints one JSON object: for each call, what postgrest-js gave back (data, error, count, status).
const { PostgrestClient } = require('@supabase/postgrest-js')
const { run } = require('./calls.cjs')

run((argv) => {
  const [url, token] = argv
  const client = new PostgrestClient(url, { headers: { Authorization: `Bearer ${token}` } })
  const calls = {
    rows: client.rpc('cheaper_than', { price: 5 }).gte('price', 1)
      .order('price', { ascending: false }).limit(1),
    selected: client.rpc('cheaper_than', { price: 5 }).select('name').eq('id', 2),
    counted: client.rpc('cheaper_than', { price: 5 }, { count: 'exact' }).order('id').range(0, 0),
    single: client.rpc('cheaper_than', { price: 5 }).eq('id', 3).single(),
    by_get: client.rpc('total_qty', { min_qty: 10 }, { get: true }),
    scalar: client.rpc('total_qty'),
    write: client.rpc('restock', { id: 3, qty: 5 }),
    write_by_get: client.rpc('restock', { id: 3, qty: 5 }, { get: true }),
    unknown: client.rpc('cheaper_thn', { price: 1 })
  }
  return calls
})
