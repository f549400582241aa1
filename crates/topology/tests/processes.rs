//! The topology's own services, for real: a PostgreSQL that restarts, and a Redis Cluster that
//! survives the death of a master (its replica takes over its slots) and forgets everything on
//! `FLUSHALL`.

use std::time::Duration;

use opentab_topology::{OwnPostgres, RedisCluster};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[test]
fn its_own_postgres_restarts_and_stops() -> TestResult {
    let pg = OwnPostgres::start()?;
    assert!(pg.is_up());
    assert!(pg.url("postgres").contains(&format!("127.0.0.1:{}", pg.port())));
    pg.restart()?;
    assert!(pg.is_up(), "back after a restart");
    pg.stop()?;
    assert!(!pg.is_up());
    pg.resume()?;
    assert!(pg.is_up());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_is_replaced_by_its_replica_and_flushall_empties_every_master() -> TestResult {
    let mut cluster = RedisCluster::start(3, 1).await?;
    assert_eq!(cluster.nodes().len(), 6);
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    let masters = cluster.masters().await?;
    assert_eq!(masters.len(), 3, "{masters:?}");

    // A key on each master, through the cluster client.
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect();
    let client = redis::cluster::ClusterClient::new(nodes)?;
    let mut conn = client.get_async_connection().await?;
    for n in 0..30 {
        let _: () = redis::cmd("SET").arg(format!("k{n}")).arg(n).query_async(&mut conn).await?;
    }

    cluster.kill(masters[0])?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    let after = cluster.masters().await?;
    assert_eq!(after.len(), 3, "a replica took the dead master's slots: {after:?}");
    assert!(!after.contains(&masters[0]));
    cluster.revive(masters[0])?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;

    cluster.flushall().await?;
    for n in 0..30 {
        let value: Option<i64> = redis::cmd("GET").arg(format!("k{n}")).query_async(&mut conn).await?;
        assert_eq!(value, None, "k{n} survived FLUSHALL");
    }
    Ok(())
}
