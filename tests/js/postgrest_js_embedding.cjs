// The real postgrest-js reading embedded resources and aggregates of a running sqlite-rest.
// Usage: NODE_PATH=<node_modules> node postgrest_js_embedding.cjs BASE_URL
// Prints one JSON object: for each call, what postgrest-js gave back (data, error, status).
const { PostgrestClient } = require('@supabase/postgrest-js')

async function main () {
  const [url] = process.argv.slice(2)
  const client = new PostgrestClient(url)
  const calls = {
    manyToOne: client.from('books').select('title, author:authors(name)').order('id'),
    oneToMany: client.from('authors').select('name, books(title)')
      .order('year', { referencedTable: 'books', ascending: false })
      .limit(1, { referencedTable: 'books' }).order('id'),
    embeddedFilter: client.from('authors').select('name, books!inner(title)')
      .gte('books.year', 1969),
    single: client.from('books').select('title, authors(name, born)').eq('id', 3).single(),
    aggregate: client.from('books').select('author_id, year.min(), count()').order('author_id'),
    ambiguous: client.from('authors').select('name, nope(*)'),
    relatedCount: client.from('authors').select('name, books(count)').order('id'),
    spreadToMany: client.from('authors').select('name, ...books(titles:title)')
      .order('id', { referencedTable: 'books' }).order('id'),
    rpcEmbed: client.rpc('authors_named', { q: 'Le%' }).select('name, books(title)')
      .order('year', { referencedTable: 'books', ascending: false }),
    rpcEmbedGet: client.rpc('authors_named', { q: 'H%' }, { get: true })
      .select('name, books!inner(title)').lt('books.year', 1966)
  }
  const out = {}
  for (const [name, call] of Object.entries(calls)) {
    const { data, error, status } = await call // one at a time, in order
    out[name] = { data, error, status }
  }
  process.stdout.write(JSON.stringify(out))
}

main().catch((err) => { console.error(err); process.exit(1) })
