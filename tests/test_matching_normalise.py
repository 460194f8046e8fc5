"""Unlisted abbreviations of type words: the lists cannot hold every way people write them.

Each test is a real situation: a ministry list, a DHIS2 export, an Iaso survey or a
school census writing the same kind of place in two ways.  The rules apply to any name,
on both sides alike, so they must also leave real names alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.bulk import UnitRecord
from storage.matching.config import MatchConfig
from storage.matching.job import MatchJob
from storage.matching.normalise import Normaliser
from storage.registry import Registry
from sync.exchange import ImportPayload, TypeDef
from sync.importing import import_payload


@pytest.fixture(scope="module")
def norm() -> Normaliser:
    return Normaliser()


def same_place(norm: Normaliser, a: str, b: str) -> None:
    na, nb = norm.normalise(a), norm.normalise(b)
    assert na.core == nb.core, (na, nb)
    assert na.types and na.types & nb.types, (na, nb)


def test_a_ministry_list_writing_comm_hlth_ctr_matches_dhis2_s_community_health_centre(
        norm: Normaliser) -> None:
    # "Comm" is short only for "community", "Hlth" is "health" without its vowels
    same_place(norm, "Kakua Comm. Hlth Ctr", "Kakua Community Health Centre")
    assert norm.normalise("Kakua Comm. Hlth Ctr").types == {"CHC"}
    same_place(norm, "Comm Hlth Post Yengema", "Yengema Community Health Post")
    assert norm.normalise("Comm Hlth Post Yengema").types == {"CHP"}


def test_a_school_census_writing_ec_prim_matches_the_ministry_s_ecole_primaire(
        norm: Normaliser) -> None:
    # a dotted "EC." is a word cut short; "PRIM." can only be "primaire" here
    same_place(norm, "EC. PRIM. MAKANZA", "ECOLE PRIMAIRE MAKANZA")
    assert norm.normalise("EC. PRIM. MAKANZA").types == {"PRIMARY"}
    same_place(norm, "tansuy makubi ec. prim.", "TANSUY MAKUBI ECOLE PRIMAIRE")


def test_ec_mat_and_c_scol_are_read_as_the_type_phrase_they_abbreviate(norm: Normaliser
                                                                        ) -> None:
    # "Mat" alone could be maternelle, maternité or maternity; after "Ec." only
    # "école maternelle" fits
    same_place(norm, "BEKOTO EC. MAT.", "BEKOTO ECOLE MATERNELLE")
    assert norm.normalise("BEKOTO EC. MAT.").types == {"NURSERY"}
    same_place(norm, "C. SCOL. VISION", "COMPLEXE SCOLAIRE VISION")
    same_place(norm, "COMPL. SCOL. ELITE", "Complexe Scolaire Elite")
    # and in another order, word by word
    same_place(norm, "SCOL. COMPL. LUEZY", "COMPLEXE SCOLAIRE LUEZY")


def test_a_survey_writing_c_de_s_matches_centre_de_sante(norm: Normaliser) -> None:
    same_place(norm, "C. de S. Kimpese", "Centre de Santé Kimpese")
    assert norm.normalise("C. de S. Kimpese").types == {"CSANTE"}


def test_mat_and_child_health_post_is_an_mchp_not_a_maternity(norm: Normaliser) -> None:
    same_place(norm, "Mat. & Child Health Post Gbo", "Gbo MCHP")
    assert norm.normalise("Mat. & Child Health Post Gbo").types == {"MCHP"}


def test_contractions_of_hospital_and_government_are_understood(norm: Normaliser) -> None:
    same_place(norm, "Kenema Hosp'l", "Kenema Hospital")
    same_place(norm, "Hsptl Kenema", "Kenema Hospital")
    same_place(norm, "Gvt Hospital Bo", "Government Hospital Bo")


def test_words_meaning_the_same_in_two_languages_are_not_ambiguous(norm: Normaliser
                                                                    ) -> None:
    # "Clin." is "clinic" in English and "clinique" in French: the same type either way
    same_place(norm, "Clin. Lumley", "Lumley Clinic")
    same_place(norm, "Clin. Lumley", "Clinique Lumley")
    # "Instit." is only "institut"
    same_place(norm, "INSTIT. SCHEKINA", "INSTITUT SCHEKINA")
    # "Prim": "primaire" stands alone as a type word, "primary" only in "primary school"
    same_place(norm, "Kasa Prim", "Kasa Ecole Primaire")


def test_real_words_are_not_taken_for_abbreviations(norm: Normaliser) -> None:
    # short words without a full stop ("mon", "sat"), words with vowels that are not a
    # prefix of a list word ("inter" is not "intégré"), an ambiguous "Mat" on its own,
    # and acronyms written with dots ("ESP.RO.DI" has no "room" in it)
    assert norm.normalise("College J'aime mon pays").core == "jaime mon pays"
    assert norm.normalise("Sat Bo").full == "sat bo"
    assert norm.normalise("Complexe Scolaire Ruther Inter").core == "ruther inter"
    assert norm.normalise("Mat Kasa").full == "mat kasa"
    assert norm.normalise("ESP.RO.DI COMPLEXE SCOLAIRE").core == "esp ro di"
    # "Ma Rose" is a name: "ma" alone stays, "E MA" (école maternelle) is a type phrase
    assert norm.normalise("MA ROSE ECOLE MATERNELLE").core == "ma rose"
    assert norm.normalise("E MA SARAH").core == "sarah"


def test_the_rules_follow_the_lists_in_use(norm: Normaliser) -> None:
    # with the French list only, "Comm. Hlth Ctr" means nothing: no English type word
    # to abbreviate, so nothing is invented
    only_fr = Normaliser(MatchConfig(languages=["fr"]))
    assert only_fr.normalise("Kakua Comm. Hlth").types == frozenset()
    assert only_fr.normalise("Kakua Comm. Hlth").core == "kakua comm hlth"
    # a type word a user adds is abbreviated like the listed ones
    cfg = MatchConfig(type_words={"dispensario": "DISPENSARY"}, languages=["en"])
    assert Normaliser(cfg).normalise("Dispens. Bo").types == {"DISPENSARY"}


# --- a unit of one list standing for two of the other ("A / B") ---------------------------

TYPES = [TypeDef("Sous-division", 1), TypeDef("Ecole", 2)]
SCHOOLS = ["COMPLEXE SCOLAIRE MPIMBO", "COLLEGE PARE DIVIN", "LUKULA ECOLE MATERNELLE",
           "BOLEFA ECOLE MATERNELLE", "MULOLO/MBAYA MBIDIAR ECOLE MATERNELLE"]
CENSUS = ["COMPLEXE, SCOLAIRE MPIMBO / COLLEGE PARE DIVIN", "Lukula Ec. Mat.",
          "BOLEFA EM", "NGULA/MBAYA MBIDIAR ECOLE MATERNELLE"]


def _list(names: list[str], prefix: str) -> ImportPayload:
    units = [UnitRecord(name="LIMETE 1", source_ref=f"{prefix}0", type_name="Sous-division")]
    units += [UnitRecord(name=n, source_ref=f"{prefix}{k + 1}", parent_ref=f"{prefix}0",
                         type_name="Ecole") for k, n in enumerate(names)]
    return ImportPayload(units=units, types=list(TYPES))


def test_a_census_unit_named_a_slash_b_is_linked_to_both_ministry_units(tmp_path: Path
                                                                         ) -> None:
    # a school census lists two schools sharing premises as one unit, "X / Y"; neither
    # school's own name is close to the joined one, and there are no coordinates: the
    # parts of the joined name are names the unit goes by
    reg = Registry.create(tmp_path / "m.gpkg")
    try:
        import_payload(reg, _list(SCHOOLS, "m"), source="Ministry")
        import_payload(reg, _list(CENSUS, "c"), source="Census")
        job = MatchJob(reg, "Ministry", "Census")
        job.run()
        assert job.sides is not None and job.result is not None
        left, right = job.sides
        links = {(left.display_ref(lk.left), right.display_ref(lk.right)): lk
                 for lk in job.result.links}
    finally:
        reg.close()
    assert ("m1", "c1") in links and ("m2", "c1") in links
    assert {links[("m1", "c1")].kind, links[("m2", "c1")].kind} == {"merge"}
    assert ("m3", "c2") in links and ("m4", "c3") in links
    # "Ngula/Mbaya" (no spaces round the slash) is one place's name, not two units: it
    # goes by no other name (else its "Mbaya Mbidiar" part would be an exact match for
    # "Mulolo/Mbaya Mbidiar", a different school)
    c4 = right.ref.index("c4")
    assert right.alias_core[c4] == []
    assert right.alias_core[right.ref.index("c1")] == ["mpimbo", "pare divin"]
