"""Curriculum data for Cadence: built-in skills, the Skill API client, the curriculum and the data manager.

Run as: cadence data --help, cadence curriculum --help, cadence skills --help
"""
