"""The bench's generated data beyond pgbench: one table like INFER FORGE's orders and
documents (text, numeric, jsonb), shared by bench.py (host) and pitr_bench.py (container)."""

DOCUMENTS_TABLE_SQL = """
    CREATE TABLE documents (
        id bigint PRIMARY KEY, customer text, title text, body text,
        amount numeric(14, 2), attrs jsonb)"""

# psycopg parameter style: %s is the row count, %% a literal %.
DOCUMENTS_ROWS_SQL = """
    INSERT INTO documents
    SELECT g, 'customer-' || (g %% 5000), 'Order ' || g || ' steel parts',
           repeat(md5(g::text), 12) || ' ' || md5((g * 7)::text),
           (g %% 100000) / 7.0,
           jsonb_build_object('line', g, 'material', 'S' || (g %% 400), 'qty', g %% 97,
                              'tags', jsonb_build_array('a' || (g %% 13), 'b' || (g %% 17)))
      FROM generate_series(1, %s) g"""


def documents_sql(rows):
    """Both statements as plain SQL for psql, with the row count filled in."""
    return DOCUMENTS_TABLE_SQL + ";\n" + DOCUMENTS_ROWS_SQL.replace("%s", str(int(rows))).replace("%%", "%") + ";"
