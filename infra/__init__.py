"""Deployment of Switchboard (azd + Bicep) and the checks that keep it consistent with the code."""
