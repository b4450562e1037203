-- scripts/airflow_owner.sql: hands Airflow's metadata database `airflow` over to the role
-- `airflow`, once. Stacks made before that role existed (the local stack, and compose volumes
-- whose initdb script created it) had it owned by POSTGRES_USER. Run as a superuser against
-- any database (psql -f): scripts/stack.sh and compose's db-migrate. Safe twice: nothing
-- happens when `airflow` owns it already.
select pg_get_userbyid(datdba) <> 'airflow' as handover from pg_database where datname = 'airflow' \gset
\if :handover
\echo 'handing the metadata database airflow over to the role airflow'
alter database airflow owner to airflow;
\connect airflow
alter schema public owner to airflow;
select format('alter table %I.%I owner to airflow', n.nspname, c.relname)
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace
where n.nspname = 'public'
  and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
  and c.relowner <> 'airflow'::regrole
  -- a sequence owned by a column follows its table
  and not (c.relkind = 'S' and exists (select 1 from pg_depend as d where d.objid = c.oid and d.deptype in ('a', 'i')))
\gexec
select format('alter type %I.%I owner to airflow', n.nspname, t.typname)
from pg_type as t
join pg_namespace as n on n.oid = t.typnamespace
where n.nspname = 'public' and t.typtype in ('e', 'd') and t.typowner <> 'airflow'::regrole
\gexec
\endif
