"""Curriculum data for Cadence: built-in skills, the Skill API client, the curriculum and the data manager.

Run as: python3 data_manager/manager.py --help, python3 data_manager/curriculum_manager.py --help,
        python -m data_manager.skills --help
"""
