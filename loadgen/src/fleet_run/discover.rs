//! Finding the pairs in etcd (`loadgen --etcd URL [--etcd-prefix P] [--pairs GLOB]`): each
//! `P/pair/NAME` record (`fleet::keys::PairRecord`) names the pair's engines' client
//! addresses (the load's targets) and its supervisor's admin endpoint (its timeline).

use ::fleet::keys::{glob_match, PairRecord};

use super::{EtcdSource, PairTarget};

/// The registered pairs whose name matches `glob`, in name order. A record that does not
/// parse, or names no engine, is skipped and said in `warnings`.
pub async fn pairs(
    etcd: &EtcdSource,
    glob: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<PairTarget>, String> {
    let kvs = etcd
        .client
        .get_prefix(&etcd.layout.pairs())
        .await
        .map_err(|e| {
            format!(
                "cannot read the pairs from etcd at {}: {e}",
                etcd.client.endpoints()
            )
        })?;
    let mut out = Vec::new();
    for kv in kvs {
        let key = kv.key_str();
        let Some(name) = etcd.layout.pair_name(&key) else {
            continue;
        };
        if !glob_match(glob, name) {
            continue;
        }
        let record: PairRecord = match serde_json::from_slice(&kv.value) {
            Ok(r) => r,
            Err(e) => {
                warnings.push(format!("{key}: not a pair record ({e}); skipped"));
                continue;
            }
        };
        let targets: Vec<String> = record
            .engines
            .iter()
            .map(|e| e.client_addr.clone())
            .filter(|a| !a.is_empty())
            .collect();
        if targets.is_empty() {
            warnings.push(format!("{key}: names no engine address; skipped"));
            continue;
        }
        out.push(PairTarget {
            name: name.to_string(),
            targets,
            admin: (!record.admin.is_empty()).then_some(record.admin),
            admin_secret: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
