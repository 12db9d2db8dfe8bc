// The real postgrest-js under roles (--permissions-file) of a running sqlite-rest.
// Usage: NODE_PATH=<node_modules> node postgrest_js_roles.cjs BASE_URL ALICE_TOKEN VIEWER_TOKEN
// Prints one JSON object: for each call, what postgrest-js gave back (data, error, count, status).
const { PostgrestClient } = require('@supabase/postgrest-js')
const { run } = require('./calls.cjs')

run((argv) => {
  const [url, alice, viewer] = argv
  const as = (token) => new PostgrestClient(url, token ? { headers: { Authorization: `Bearer ${token}` } } : {})
  const a = as(alice)
  const v = as(viewer)
  const anon = as(null)
  // refused or row-filtered calls first: the test checks they changed nothing
  const calls = {
    own: a.from('notes').select('*', { count: 'exact' }).order('id'),
    othersByFilter: a.from('notes').select('id').eq('owner_id', 'bob'),
    hiddenColumn: a.from('notes').select('id,secret'),
    hiddenColumnFilter: a.from('notes').select('id').like('secret', 's*'),
    insertForBob: a.from('notes').insert({ id: 10, owner_id: 'bob', body: 'spam' }).select(),
    updateBobs: a.from('notes').update({ body: 'mine now' }).eq('id', 2).select(),
    deleteBobs: a.from('notes').delete().eq('id', 2).select(),
    upsertBobs: a.from('notes').upsert({ id: 2, owner_id: 'alice', body: 'taken' }).select(),
    viewerInsert: v.from('notes').insert({ id: 11, owner_id: 'vic', body: 'x' }),
    viewerUpdate: v.from('notes').update({ body: 'x' }).eq('owner_id', 'vic'),
    embedOneToMany: a.from('users').select('name,notes(body,comments(text))').order('id'),
    embedManyToOne: a.from('comments').select('text,notes(body,users(name))').order('id'),
    embedInner: a.from('users').select('name,notes!inner(id)').order('id'),
    rpcAllowed: a.rpc('my_note_count'),
    rpcRefused: a.rpc('all_notes'),
    rpcWriteRefused: a.rpc('add_note', { body: 'via rpc' }),
    anonRead: anon.from('users').select('id').order('id'),
    anonNotes: anon.from('notes').select('*'),
    anonInsert: anon.from('users').insert({ id: 'eve', name: 'Eve' }),
    anonRpc: anon.rpc('my_note_count'),
    // the one allowed write, last
    insertOwn: a.from('notes').insert({ id: 12, owner_id: 'alice', body: 'from js' }).select()
  }
  return calls
})
