//! What a report keeps: container, cgroup and path filters, and the `top` cut.

use super::{
    aggregate::CgroupDraft,
    schema::{CgroupUsage, Totals},
};

/// What to keep of a report.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// A container name, id, or id prefix.
    pub container: Option<String>,
    /// A cgroup path or a parent of it.
    pub cgroup: Option<String>,
    /// Files whose path (container view) or host path starts with this.
    pub path_prefix: Option<String>,
    /// The N largest cgroups, and the N largest files in each.
    pub top: Option<usize>,
    /// The N largest files of each cgroup (all cgroups kept).
    pub files_per_cgroup: Option<usize>,
    /// Files of this cgroup (hierarchy, id) only: every other cgroup is listed without its
    /// files, which are then neither named nor measured (`top` names what is on screen).
    pub files_of: Option<(u32, u64)>,
}

impl Filter {
    /// Whether a report under this filter names every file of the cgroups it keeps (no cut to
    /// the largest files, no cgroup shown without its files).
    pub fn names_every_file(&self) -> bool {
        self.top.is_none() && self.files_per_cgroup.is_none() && self.files_of.is_none()
    }

    pub fn is_empty(&self) -> bool {
        self.container.is_none()
            && self.cgroup.is_none()
            && self.path_prefix.is_none()
            && self.top.is_none()
            && self.files_per_cgroup.is_none()
            && self.files_of.is_none()
    }
}

/// Whether `path` is `prefix` or lies below it, component-wise.
/// Whether `needle` (lowercase) appears in the cgroup's path, its container's name, id,
/// runtime or pod, its systemd unit, or the path of a file it lists: the free-text filter of
/// the live view.
pub fn mentions(cgroup: &CgroupUsage, needle: &str) -> bool {
    let has = |text: &str| text.to_lowercase().contains(needle);
    let container = cgroup.container.as_ref();
    cgroup.path.as_deref().is_some_and(has)
        || container.is_some_and(|c| {
            c.name.as_deref().is_some_and(has)
                || has(&c.id)
                || has(&c.runtime.to_string())
                || c.pod.as_ref().is_some_and(|p| {
                    [&p.name, &p.namespace]
                        .into_iter()
                        .flatten()
                        .any(|t| has(t))
                })
        })
        || cgroup.unit.as_deref().is_some_and(has)
        || cgroup
            .files
            .iter()
            .any(|f| f.path.as_deref().is_some_and(has))
}

pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A cgroup as the filters see it: its figures and names, and files that can be cut.
pub trait Listing {
    fn usage(&self) -> &CgroupUsage;
    /// Keeps the first (largest) `n` files.
    fn truncate_files(&mut self, n: usize);
}

impl Listing for CgroupUsage {
    fn usage(&self) -> &CgroupUsage {
        self
    }

    fn truncate_files(&mut self, n: usize) {
        self.files.truncate(n);
    }
}

impl Listing for CgroupDraft {
    fn usage(&self) -> &CgroupUsage {
        &self.usage
    }

    fn truncate_files(&mut self, n: usize) {
        CgroupDraft::truncate_files(self, n);
    }
}

/// Keeps what `filter` asks for. Totals describe what the filters keep, before the `top` cut
/// (which only limits what is listed). A cgroup's own figures stay whole even when only some of
/// its files are listed.
///
/// `name_files` fills in file paths; it is called only for the files that can still be
/// shown: with a path filter every file needs a name, otherwise the `top` cut comes first.
pub fn apply_filter(
    cgroups: &mut Vec<CgroupUsage>,
    totals: &mut Totals,
    filter: &Filter,
    mut name_files: impl FnMut(&mut [CgroupUsage]),
) {
    let Some(prefix) = filter.path_prefix.as_deref() else {
        apply_cgroup_filter(cgroups, totals, filter);
        name_files(cgroups);
        return;
    };
    filter_cgroups(cgroups, filter);
    name_files(cgroups);
    filter_paths(cgroups, prefix);
    *totals = totals_of(cgroups);
    cut(cgroups, filter);
}

/// Keeps what `filter` asks for when it needs no file names (no path prefix), as
/// [`apply_filter`] would.
pub fn apply_cgroup_filter<T: Listing>(cgroups: &mut Vec<T>, totals: &mut Totals, filter: &Filter) {
    debug_assert!(filter.path_prefix.is_none(), "a path filter needs names");
    filter_cgroups(cgroups, filter);
    if !filter.is_empty() {
        *totals = totals_of(cgroups);
    }
    cut(cgroups, filter);
}

/// The `top` and files-per-cgroup cuts (cgroups and files are sorted, largest first).
fn cut<T: Listing>(cgroups: &mut Vec<T>, filter: &Filter) {
    if let Some(top) = filter.top {
        cgroups.truncate(top);
        for cgroup in cgroups.iter_mut() {
            cgroup.truncate_files(top);
        }
    }
    if let Some(files) = filter.files_per_cgroup {
        for cgroup in cgroups.iter_mut() {
            cgroup.truncate_files(files);
        }
    }
    if let Some(only) = filter.files_of {
        for cgroup in cgroups.iter_mut() {
            let c = cgroup.usage();
            if (c.hierarchy, c.id) != only {
                cgroup.truncate_files(0);
            }
        }
    }
}

/// Keeps the cgroups `filter` names by container or cgroup path (needs cgroup names only).
fn filter_cgroups<T: Listing>(cgroups: &mut Vec<T>, filter: &Filter) {
    cgroups.retain(|c| {
        let c = c.usage();
        let container_ok = filter.container.as_deref().is_none_or(|wanted| {
            c.container
                .as_ref()
                .is_some_and(|container| container.matches(wanted))
        });
        let cgroup_ok = filter
            .cgroup
            .as_deref()
            .is_none_or(|prefix| c.path.as_deref().is_some_and(|p| under(p, prefix)));
        container_ok && cgroup_ok
    });
}

/// Keeps the files under `filter.path_prefix` (needs file names), and the cgroups with any.
fn filter_paths(cgroups: &mut Vec<CgroupUsage>, prefix: &str) {
    for cgroup in cgroups.iter_mut() {
        cgroup.files.retain(|f| {
            [&f.path, &f.host_path]
                .into_iter()
                .flatten()
                .any(|p| under(p, prefix))
        });
    }
    cgroups.retain(|c| !c.files.is_empty());
}

fn totals_of<T: Listing>(cgroups: &[T]) -> Totals {
    let cgroups = cgroups.iter().map(Listing::usage);
    Totals {
        cached_bytes: cgroups.clone().map(|c| c.cached_bytes).sum(),
        added_bytes: cgroups.clone().map(|c| c.added_bytes).sum(),
        removed_bytes: cgroups.clone().map(|c| c.removed_bytes).sum(),
        cgroups: cgroups.len(),
        files: cgroups.map(|c| c.file_count).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{counters, key, traced};
    use crate::model::{aggregate, Container};

    fn named(mut cgroups: Vec<CgroupUsage>) -> Vec<CgroupUsage> {
        for c in &mut cgroups {
            c.path = Some(format!("/apps/cg{}", c.id));
            c.container = Some(Container {
                runtime: crate::model::Runtime::Runc,
                id: format!("abcdef{}", c.id),
                name: Some(format!("web-{}", c.id)),
                ..Container::default()
            });
            for f in &mut c.files {
                f.path = Some(format!("/tmp/f{}.log", f.ino).into());
                f.host_path = Some(format!("/var/lib/upper/tmp/f{}.log", f.ino).into());
            }
        }
        cgroups
    }

    #[test]
    fn free_text_finds_a_cgroup_by_path_container_or_file_and_nothing_else() {
        let (cgroups, _) = aggregate(traced(vec![(key(10, 1), counters(1, 0))]), 4096);
        let cgroup = &named(cgroups)[0];
        for needle in ["/apps/cg10", "web-10", "abcdef", "runc", "f1.log"] {
            assert!(mentions(cgroup, needle), "{needle}");
        }
        assert!(!mentions(cgroup, "nginx"));
        assert!(
            !mentions(cgroup, "upper"),
            "host paths are not what the view lists"
        );
    }

    #[test]
    fn filters_by_container_cgroup_path_and_top() {
        let entries = vec![
            (key(10, 1), counters(100, 0)),
            (key(10, 2), counters(300, 0)),
            (key(20, 3), counters(1000, 0)),
        ];
        let (all, all_totals) = aggregate(traced(entries), 4096);
        let all = named(all);
        let run = |filter: Filter| {
            let (mut cgroups, mut totals) = (all.clone(), all_totals.clone());
            apply_filter(&mut cgroups, &mut totals, &filter, |_| {});
            (cgroups, totals)
        };

        let (c, t) = run(Filter {
            container: Some("web-10".into()),
            ..Filter::default()
        });
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, 10);
        assert_eq!(t.cached_bytes, 400 * 4096);
        assert_eq!(
            run(Filter {
                container: Some("abcdef20".into()),
                ..Filter::default()
            })
            .0[0]
                .id,
            20
        );
        assert_eq!(
            run(Filter {
                container: Some("abcd".into()),
                ..Filter::default()
            })
            .0
            .len(),
            2,
            "id prefix"
        );
        assert!(run(Filter {
            container: Some("nope".into()),
            ..Filter::default()
        })
        .0
        .is_empty());

        assert_eq!(
            run(Filter {
                cgroup: Some("/apps".into()),
                ..Filter::default()
            })
            .0
            .len(),
            2
        );
        assert_eq!(
            run(Filter {
                cgroup: Some("/apps/cg1".into()),
                ..Filter::default()
            })
            .0
            .len(),
            0,
            "component-wise"
        );

        let (c, _) = run(Filter {
            path_prefix: Some("/tmp/f2.log".into()),
            ..Filter::default()
        });
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].files.len(), 1);
        assert_eq!(c[0].cached_bytes, 400 * 4096, "cgroup figures stay whole");
        assert_eq!(
            run(Filter {
                path_prefix: Some("/var/lib/upper".into()),
                ..Filter::default()
            })
            .0
            .len(),
            2,
            "host path matches"
        );

        let (c, t) = run(Filter {
            top: Some(1),
            ..Filter::default()
        });
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, 20);
        assert_eq!(c[0].files.len(), 1);
        assert_eq!(
            t.cgroups, 2,
            "totals describe what the filters keep, not the top cut"
        );
    }
}
