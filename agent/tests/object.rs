//! Rootless checks of the embedded kernel object: the maps it declares are exactly the ones
//! `agent_common::maps` names, every name survives the kernel's 15-byte cut, and every program
//! the engine attaches is there.

use object::{Object, ObjectSection, ObjectSymbol};

fn object() -> object::File<'static> {
    object::File::parse(latch_agent::kernel::OBJECT).expect("the embedded object is an ELF file")
}

#[test]
fn declares_exactly_the_shared_map_names() {
    let obj = object();
    let maps = obj.section_by_name("maps").expect("a maps section");
    let mut names: Vec<String> = obj
        .symbols()
        .filter(|s| s.section_index() == Some(maps.index()))
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    names.sort();
    let mut want: Vec<String> = agent_common::maps::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    want.sort();
    assert_eq!(names, want);
    for n in &names {
        assert!(
            n.len() <= agent_common::maps::NAME_MAX,
            "map name {n} is longer than the kernel keeps"
        );
    }
}

#[test]
fn carries_every_program_the_engine_attaches() {
    let obj = object();
    let sections: Vec<String> = obj
        .sections()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    for want in [
        "tracepoint/sched/sched_process_exec",
        "tracepoint/sched/sched_process_exit",
        "raw_tp/sys_enter",
        "cgroup/connect4",
        "cgroup/connect6",
        "cgroup/sendmsg4",
        "cgroup/sendmsg6",
        "lsm/bprm_check_security",
    ] {
        assert!(
            sections.iter().any(|s| s == want),
            "missing program section {want}: {sections:?}"
        );
    }
    let license = obj.section_by_name("license").expect("license section");
    assert_eq!(license.data().expect("license bytes"), b"Dual MIT/GPL\0");
}
