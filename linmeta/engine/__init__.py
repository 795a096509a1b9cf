"""The engine (third layer): what runs methods at scale and turns claims into verdicts.

- :mod:`.families`: families as plugins (built in, or installed through the entry-point group
  ``linmeta.families``);
- :mod:`.protocols`: the protocol registry (a protocol is a value; the sweep is generic);
- :mod:`.sweep`: many configurations of any protocol as a few compiled, batched programs;
- :mod:`.runs`: one configuration run and recorded; a sweep into a resumable folder;
- :mod:`.results`, :mod:`.config`: result folders and configuration files;
- :mod:`.compile_cache`, :mod:`.program_cache`: compiled programs kept across processes;
- :mod:`.claims`, :mod:`.verdict`, :mod:`.claim_support`: the claim registry, verdict rows with
  their tolerances, and the helpers claim modules share.

The engine imports the core and the methods, never a family: families register themselves.
"""
