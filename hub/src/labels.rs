//! Label values that come from agents (cluster names, extended-resource
//! names): each metric series labelled with a cluster is removed when the
//! cluster is forgotten, so names do not accumulate in `/metrics`.

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};

/// Removes every series of `vec` whose `cluster` label is `cluster`;
/// returns how many.
pub fn remove_cluster<T: MetricVecBuilder>(vec: &MetricVec<T>, cluster: &str) -> usize {
    let mut removed = 0;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get("cluster") == Some(&cluster) && vec.remove(&labels).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn removes_only_that_clusters_series() -> prometheus::Result<()> {
        let vec = IntCounterVec::new(Opts::new("t", "t"), &["reason", "cluster"])?;
        vec.with_label_values(&["x", "gone"]).inc();
        vec.with_label_values(&["y", "gone"]).inc();
        vec.with_label_values(&["x", "kept"]).inc();
        assert_eq!(remove_cluster(&vec, "gone"), 2);
        let left: usize = vec.collect().iter().map(|f| f.get_metric().len()).sum();
        assert_eq!(left, 1);
        assert_eq!(vec.with_label_values(&["x", "kept"]).get(), 1);
        Ok(())
    }
}
